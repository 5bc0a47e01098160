# EXTRA of this call (an untracked helper, tmp_extra3.sh, beside the committed tree); the call:
# AUTOGLM_GIT_COMMIT=6db6559 TESTS_GPU=1 TEST_JOBS=2 TEST_TIMEOUT=300 TEST_FILES="tests/test_linear.py tests/test_qkv_rope.py
# tests/test_linear_norm.py tests/test_patch_gpu.py tests/test_engine.py" SKIP_BENCH=1 EXTRA="bash tmp_extra3.sh" EXTRA_TIMEOUT=420 make gpu-check (2x H100)
# Session 23, call 3 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
( export CUDA_VISIBLE_DEVICES=1
  timeout 220 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_linear.py -m gpu -q -p no:cacheprovider \
    -k "cluster_split or reference_shapes or split_k_extremes or prologue_matches" > $R/sanitizer_linear.log 2>&1; echo "sanitizer linear rc=$?" >> $R/sanitizer_linear.log
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_qkv_rope.py tests/test_linear_norm.py -m gpu -q -p no:cacheprovider \
    -k "not opcheck" > $R/sanitizer_epilogues.log 2>&1; echo "sanitizer epilogues rc=$?" >> $R/sanitizer_epilogues.log ) &
san=$!
export CUDA_VISIBLE_DEVICES=0
KN=4096x4608,4096x6144,2048x6144
for b in "" "--bias"; do
  lab=nobias; [ -n "$b" ] && lab=bias
  timeout 60 python3 scripts/gemv_sweep.py --label $lab --json $R/gemv_bias.jsonl --shapes "" $b --M 1,8,16 --kn $KN > $R/gemv_$lab.log 2>&1
  echo "sweep $b rc=$?"; grep -v "^$" $R/gemv_$lab.log
done
timeout 220 python3 -m pytest bench/bench_linear.py --benchmark-only -q -p no:cacheprovider --benchmark-json=$R/bench_linear.json > $R/bench_linear.log 2>&1; echo "bench_linear rc=$?"
tail -1 $R/bench_linear.log
python3 bench/report.py $R > $R/report_stdout.log 2>&1; echo "report rc=$?"
grep -E "qkv M=(1|8|16) |slower" $R/REPORT.md
wait $san
tail -3 $R/sanitizer_linear.log $R/sanitizer_epilogues.log; grep -h "ERROR SUMMARY" $R/sanitizer_*.log
