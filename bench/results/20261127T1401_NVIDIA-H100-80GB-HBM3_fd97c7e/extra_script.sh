# The call (no build: Triton only; a first try without PYTHONPATH could not import the package):
# export PYTHONPATH=$PWD; AUTOGLM_GIT_COMMIT=fd97c7e SKIP_BUILD=1 SKIP_TESTS=1 SKIP_BENCH=1 \
#   EXTRA='python3 scripts/probe_grid_cost.py --json $RESULTS_DIR/grid_cost.json' EXTRA_TIMEOUT=150 make gpu-check (1x H100)
python3 scripts/probe_grid_cost.py --json $RESULTS_DIR/grid_cost.json
