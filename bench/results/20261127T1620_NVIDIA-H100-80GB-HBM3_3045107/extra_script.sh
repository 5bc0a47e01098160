# EXTRA of this call (an untracked helper, tmp_extra2.sh, beside the committed tree at 3045107); the call:
# timeout 500 env AUTOGLM_GIT_COMMIT=3045107 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra2.sh" EXTRA_TIMEOUT=380 make gpu-check (1x H100)
# Session 24, call 2 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
b() { timeout 100 python3 -m autoglm_kernels bench --models llama3.2-1b "$@" 2>&1 | tail -4; }
echo "== 1B graph-stock, patched (head-major default), nothing else on the machine"
b --modes graph-stock,patched --json $R/e2e_1b_a.json
echo "== 1B patched, AUTOGLM_DECODE_HEAD_MAJOR=0"; AUTOGLM_DECODE_HEAD_MAJOR=0 b --modes patched --json $R/e2e_1b_hm0.json
echo "== 1B patched, AUTOGLM_DECODE_HEAD_MAJOR=1"; AUTOGLM_DECODE_HEAD_MAJOR=1 b --modes patched --json $R/e2e_1b_hm1.json
echo "== OPT patched"; timeout 100 python3 -m autoglm_kernels bench --models opt-1.3b --modes patched --json $R/e2e_opt.json 2>&1 | tail -3
echo "== tests/test_rope.py unfiltered"
timeout 150 python3 -m pytest tests/test_rope.py -q -p no:cacheprovider -rfE --tb=short > $R/tests_test_rope_all.log 2>&1; echo "rope rc=$?"; tail -3 $R/tests_test_rope_all.log
