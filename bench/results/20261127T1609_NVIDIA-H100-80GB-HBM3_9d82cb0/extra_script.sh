# EXTRA of this call (an untracked helper, tmp_extra1.sh, beside the committed tree commit 9d82cb0); the call:
# timeout 555 env TESTS_GPU=1 TEST_MARK= TEST_JOBS=3 TEST_TIMEOUT=380 SKIP_BENCH=1 EXTRA="bash tmp_extra1.sh" EXTRA_TIMEOUT=430 make gpu-check (2x H100)
# Session 24, call 1 (untracked helper; copied into the results folder as extra_script.sh)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
timeout 280 python3 -m autoglm_kernels bench --models llama3.1-8b,glm4-9b,autoglm-phone-9b --modes graph-stock,patched --json $R/e2e_9b.json > $R/e2e_9b.log 2>&1; echo "9b rc=$?"; tail -9 $R/e2e_9b.log
timeout 140 python3 -m autoglm_kernels bench --models llama3.2-1b,opt-1.3b --modes graph-stock,patched --json $R/e2e_small.json > $R/e2e_small.log 2>&1; echo "small rc=$?"; tail -7 $R/e2e_small.log
