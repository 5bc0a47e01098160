# EXTRA of this call (an untracked helper, tmp_extra2.sh, beside the committed tree); the call:
# AUTOGLM_GIT_COMMIT=a6c31da TESTS_GPU=1 TEST_JOBS=2 TEST_TIMEOUT=300 TEST_FILES="tests/test_linear.py tests/test_qkv_rope.py
# tests/test_linear_norm.py tests/test_patch_gpu.py tests/test_engine.py" SANITIZE=1 SANITIZE_FILTER=cluster_split SANITIZE_TIMEOUT=120
# SKIP_BENCH=1 EXTRA="bash tmp_extra2.sh" EXTRA_TIMEOUT=300 make gpu-check (2x H100)
# Session 22, call 2 (untracked helper; copied into the results folder as extra_script.sh)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
KN=4096x4608,2048x3072,4096x5120,4096x4352,4096x544,4096x4224,4096x6144,4096x4096
for v in 0 1 2 3 4; do
  timeout 80 env AUTOGLM_GEMV_CLUSTER_SPLIT=$v python3 scripts/gemv_sweep.py --label split$v --json $R/gemv_cluster.jsonl --shapes "" \
    --M 9,16 --kn $KN > $R/gemv_cluster_$v.log 2>&1; echo "split=$v rc=$?"; cat $R/gemv_cluster_$v.log | grep -v "^$"
done
timeout 200 python3 -m pytest bench/bench_linear.py --benchmark-only -q -p no:cacheprovider --benchmark-json=$R/bench_linear.json > $R/bench_linear.log 2>&1; echo "bench_linear rc=$?"
tail -3 $R/bench_linear.log
