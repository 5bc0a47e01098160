# EXTRA of this call (an untracked helper, tmp_extra3.sh, beside the committed tree at 6ee6b3d); the call:
# timeout 470 env AUTOGLM_GIT_COMMIT=6ee6b3d SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra3.sh" EXTRA_TIMEOUT=300 make gpu-check (1x H100)
# Session 25, call 3 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
b() { timeout 150 python3 -m autoglm_kernels bench "$@" 2>&1 | tail -5; }
echo "== e2e GLM-4-9B and AutoGLM-Phone-9B graph-stock, patched"; b --models glm4-9b,autoglm-phone-9b --modes graph-stock,patched --json $R/e2e_9b.json
echo "== e2e OPT-1.3B graph-stock, patched"; b --models opt-1.3b --modes graph-stock,patched --json $R/e2e_opt.json
