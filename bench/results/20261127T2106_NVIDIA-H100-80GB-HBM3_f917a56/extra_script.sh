# EXTRA of this call (an untracked helper, tmp_extra2.sh, beside the committed tree at f917a56); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=f917a56 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra2.sh" EXTRA_TIMEOUT=430 make gpu-check (1x H100)
# Session 26, call 2 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
KN=2048x2048,2048x2560,2048x3072,2048x4096,2048x6144,2048x8192,4096x4096,4096x4608,4096x6144,8192x2048
echo "== GEMV ring depth x split-K warp rule, M = 1 (one process per variant)"
for v in "nb2:AUTOGLM_GEMV_STAGES=2" "nb3:AUTOGLM_GEMV_STAGES=3" "nb2_pow2:AUTOGLM_GEMV_STAGES=2 AUTOGLM_GEMV_ANY_WARPS=0" \
         "nb3_pow2:AUTOGLM_GEMV_STAGES=3 AUTOGLM_GEMV_ANY_WARPS=0" "nb2_again:AUTOGLM_GEMV_STAGES=2" "nb3_again:AUTOGLM_GEMV_STAGES=3"; do
  lab=${v%%:*}; kv=${v#*:}
  timeout 70 env $kv python3 scripts/gemv_sweep.py --label $lab --json $R/gemv_nb.jsonl --shapes "" --kn $KN --M 1 \
    > $R/gemv_nb_$lab.log 2>&1; echo "sweep $lab rc=$?"; grep -v "^$" $R/gemv_nb_$lab.log | tail -10
done
b() { timeout 75 env "$@" 2>&1 | tail -2; }
for i in 1 2; do
  for s in 2 3; do
    echo "== e2e Llama-3.2-1B patched, AUTOGLM_GEMV_STAGES=$s (round $i)"
    b AUTOGLM_GEMV_STAGES=$s python3 -m autoglm_kernels bench --models llama3.2-1b --modes patched --json $R/e2e_1b_nb${s}_$i.json
  done
done
for s in 2 3; do
  echo "== e2e OPT-1.3B patched, AUTOGLM_GEMV_STAGES=$s"
  b AUTOGLM_GEMV_STAGES=$s python3 -m autoglm_kernels bench --models opt-1.3b --modes patched --json $R/e2e_opt_nb$s.json
done
