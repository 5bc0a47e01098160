# The call (1x H100; no build, Triton only; no helper script):
# export PYTHONPATH=$PWD; timeout 250 env AUTOGLM_GIT_COMMIT=383dc2a SKIP_BUILD=1 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA='timeout 200 python3 scripts/probe_kv_stride.py --json $RESULTS_DIR/kv_stride.json' make gpu-check
