# EXTRA of this call (an untracked helper, tmp_extra2.sh, beside the committed tree); the call:
# AUTOGLM_GIT_COMMIT=110e305 TESTS_GPU=1 TEST_JOBS=2 TEST_TIMEOUT=300 TEST_FILES="tests/test_linear.py tests/test_qkv_rope.py
# tests/test_linear_norm.py tests/test_patch_gpu.py" SKIP_BENCH=1 EXTRA="bash tmp_extra2.sh" EXTRA_TIMEOUT=390 make gpu-check (2x H100)
# (110e305: the two-tiles-per-warp change, the same code as 6904eb9 after a local history rewrite)
# Session 23, call 2 (untracked helper; copied into the results folder as extra_script.sh)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
KN=4096x4608,4096x6144,2048x6144,2048x8192,4096x5120,4096x4224
for v in 1 2; do
  timeout 110 env AUTOGLM_GEMV_TILES_PER_WARP=$v python3 scripts/gemv_sweep.py --label tw$v --json $R/gemv_tw.jsonl --shapes "" \
    --M 2,4,8,12,16 --kn $KN > $R/gemv_tw_$v.log 2>&1; echo "tw=$v rc=$?"; grep -v "^$" $R/gemv_tw_$v.log
done
timeout 150 python3 -m pytest bench/bench_linear.py --benchmark-only -q -p no:cacheprovider -k decode --benchmark-json=$R/bench_linear.json > $R/bench_linear.log 2>&1; echo "bench_linear rc=$?"
tail -1 $R/bench_linear.log
python3 bench/report.py $R > $R/report_stdout.log 2>&1; echo "report rc=$?"
