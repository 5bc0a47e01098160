# EXTRA of this call (an untracked helper, tmp_extra1.sh, beside the committed tree); the call:
# AUTOGLM_GIT_COMMIT=f7573f6 TESTS_GPU=1 TEST_JOBS=3 TEST_TIMEOUT=330 BENCH_FILES=bench/bench_linear.py
# BENCH_FILTER=decode BENCH_TIMEOUT=120 EXTRA="bash tmp_extra1.sh" EXTRA_TIMEOUT=330 make gpu-check (2x H100)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
AUTOGLM_GEMV_ANY_WARPS=0 timeout 120 python3 -m pytest bench/bench_linear.py --benchmark-only -q -p no:cacheprovider -k decode --benchmark-json=$R/bench_linear_pow2.json --benchmark-columns=median > $R/bench_linear_pow2.log 2>&1; echo "pow2 bench rc=$?"
for any in 1 0; do AUTOGLM_GEMV_ANY_WARPS=$any timeout 150 python3 -m autoglm_kernels bench --models llama3.2-1b,opt-1.3b --modes patched --json $R/e2e_small_any$any.json > $R/e2e_small_any$any.log 2>&1; echo "small any=$any rc=$?"; tail -4 $R/e2e_small_any$any.log; done
timeout 280 python3 -m autoglm_kernels bench --models llama3.1-8b,glm4-9b,autoglm-phone-9b --modes graph-stock,patched --json $R/e2e_9b.json > $R/e2e_9b.log 2>&1; echo "9b rc=$?"; tail -9 $R/e2e_9b.log
