# EXTRA of this call (an untracked helper, tmp_extra4.sh, beside the committed tree at 61076c1); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=61076c1 CUDA_VISIBLE_DEVICES=0 TESTS_GPU=1 TEST_JOBS=3 TEST_TIMEOUT=200 TEST_FILES="tests/test_linear.py tests/test_qkv_rope.py tests/test_linear_norm.py" SKIP_BENCH=1 EXTRA="bash tmp_extra4.sh" EXTRA_TIMEOUT=400 make gpu-check (2x H100)
# Session 26, call 4 (untracked helper; copied into the results folder as extra_script.sh)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
KN=2048x2048,2048x2560,2048x3072,2048x4096,2048x6144,2048x8192,4096x4096,4096x4608,4096x6144,8192x2048
echo "== GEMV at M = 1: the room rule (default) against any count (ANY_WARPS=2, the rule before)"
for v in "room:AUTOGLM_GEMV_ANY_WARPS=1" "any:AUTOGLM_GEMV_ANY_WARPS=2" "room_again:AUTOGLM_GEMV_ANY_WARPS=1" "any_again:AUTOGLM_GEMV_ANY_WARPS=2"; do
  lab=${v%%:*}; kv=${v#*:}
  timeout 60 env $kv python3 scripts/gemv_sweep.py --label $lab --json $R/gemv_room.jsonl --shapes "" --kn $KN --M 1,8 \
    > $R/gemv_room_$lab.log 2>&1; echo "sweep $lab rc=$?"; grep -v "^$" $R/gemv_room_$lab.log | tail -20
done
echo "== bench_linear.py (decode and prefill cases), default rule"
timeout 90 python3 -m pytest bench/bench_linear.py --benchmark-only -q -p no:cacheprovider --benchmark-json=$R/bench_linear.json > $R/bench_linear.log 2>&1; echo "bench_linear rc=$?"
python3 bench/report.py $R > $R/report_stdout.log 2>&1; echo "report rc=$?"
grep -E "(1b|opt-1.3b|8b).* M=1 |slower" $R/REPORT.md
b() { timeout 75 env "$@" 2>&1 | tail -1; }
echo "== waiting for the tests on GPU 1"
while [ ! -s $R/tests.log ]; do sleep 3; done; sleep 2
for m in opt-1.3b llama3.2-1b; do
  for a in 1 2; do
    echo "== e2e $m patched, AUTOGLM_GEMV_ANY_WARPS=$a"
    b AUTOGLM_GEMV_ANY_WARPS=$a python3 -m autoglm_kernels bench --models $m --modes patched --json $R/e2e_${m}_aw$a.json
  done
done
