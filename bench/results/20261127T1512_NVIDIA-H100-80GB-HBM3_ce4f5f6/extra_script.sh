# EXTRA of this call (an untracked helper, tmp_extra4.sh, beside the committed tree); the call:
# AUTOGLM_GIT_COMMIT=ce4f5f6 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra4.sh" EXTRA_TIMEOUT=450 make gpu-check (1x H100)
# Session 23, call 4 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
timeout 290 python3 -m autoglm_kernels bench --models llama3.1-8b,glm4-9b,autoglm-phone-9b --modes graph-stock,patched --json $R/e2e_9b.json > $R/e2e_9b.log 2>&1; echo "9b rc=$?"; tail -9 $R/e2e_9b.log
timeout 150 python3 -m autoglm_kernels bench --models llama3.2-1b,opt-1.3b --modes graph-stock,patched --json $R/e2e_small.json > $R/e2e_small.log 2>&1; echo "small rc=$?"; tail -7 $R/e2e_small.log
