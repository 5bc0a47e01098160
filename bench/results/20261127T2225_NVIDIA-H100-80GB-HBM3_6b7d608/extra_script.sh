# EXTRA of this call (an untracked helper, tmp_extra1.sh, beside the committed tree at 6b7d608); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=6b7d608 CUDA_VISIBLE_DEVICES=0 TESTS_GPU=1 TEST_JOBS=3 TEST_TIMEOUT=200 TEST_FILES="tests/test_linear.py tests/test_qkv_rope.py tests/test_linear_norm.py" SKIP_BENCH=1 EXTRA="bash tmp_extra1.sh" EXTRA_TIMEOUT=420 make gpu-check (2x H100)
# Session 27, call 1 (untracked helper; copied into the results folder as extra_script.sh)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
KN=2048x2048,2048x2304,2048x2560,2048x3072,2048x4096,4096x2560,4096x3072,1024x3072,8192x2048
echo "== GEMV at M = 1 / 8: ring depth by grid (default) against 2 and 3 batches everywhere"
for v in "rule:AUTOGLM_GEMV_ANY_WARPS=1" "nb2:AUTOGLM_GEMV_STAGES=2" "nb3:AUTOGLM_GEMV_STAGES=3"; do
  lab=${v%%:*}; kv=${v#*:}
  timeout 60 env $kv python3 scripts/gemv_sweep.py --label $lab --json $R/gemv_depth.jsonl --shapes "" --kn $KN --M 1,8 \
    > $R/gemv_depth_$lab.log 2>&1; echo "sweep $lab rc=$?"; grep -v "^$" $R/gemv_depth_$lab.log | tail -18
done
echo "== bench_linear.py, default rule"
timeout 90 python3 -m pytest bench/bench_linear.py --benchmark-only -q -p no:cacheprovider --benchmark-json=$R/bench_linear.json > $R/bench_linear.log 2>&1; echo "bench_linear rc=$?"
python3 bench/report.py $R > $R/report_stdout.log 2>&1; echo "report rc=$?"
grep -E "(1b|opt-1.3b).* M=(1|8) |slower" $R/REPORT.md
b() { timeout 70 env "$@" 2>&1 | tail -1; }
echo "== waiting for the tests on GPU 1"
while [ ! -s $R/tests.log ]; do sleep 3; done; sleep 2
for a in 1 2; do
  for s in rule 2; do
    echo "== e2e llama3.2-1b patched, stages $s (round $a)"
    if [ $s = rule ]; then b AUTOGLM_GEMV_ANY_WARPS=1 python3 -m autoglm_kernels bench --models llama3.2-1b --modes patched --json $R/e2e_1b_${s}_$a.json
    else b AUTOGLM_GEMV_STAGES=2 python3 -m autoglm_kernels bench --models llama3.2-1b --modes patched --json $R/e2e_1b_nb2_$a.json; fi
  done
done
