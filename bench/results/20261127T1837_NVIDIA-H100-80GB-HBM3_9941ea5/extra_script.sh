# EXTRA of this call (an untracked helper, tmp_extra4.sh, beside the committed tree at 9941ea5); the call:
# timeout 330 env AUTOGLM_GIT_COMMIT=9941ea5 SKIP_BUILD=1 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra4.sh" EXTRA_TIMEOUT=300 make gpu-check (1x H100; no build: Triton only, the doctor's fallbacks are for the unbuilt extension)
# Session 25, call 4 (untracked helper; copied into the results folder as extra_script.sh)
# Triton only (no build): num_splits 2 / 4 (the in-kernel merge) against the default (reduce kernel) at small capacities
export PYTHONPATH=$PWD
R=$RESULTS_DIR
T() { timeout 90 python3 bench/tune_decode_attention.py "$@" 2>&1 | grep -E "^(llama|glm)"; }
echo "== C = L (512, 1024)"; T --contexts 512,1024 --splits 2,4,8,16 --json $R/small_c_full.json
echo "== C = 2L"; T --contexts 256,512 --capacity-mult 2 --splits 2,4,8,16 --json $R/small_c_x2.json
echo "== C = 4L"; T --contexts 128,256 --capacity-mult 4 --splits 2,4,8,16 --json $R/small_c_x4.json
echo "== C = L again (alternation)"; T --contexts 512,1024 --splits 2,4,8,16 --json $R/small_c_full_r2.json
