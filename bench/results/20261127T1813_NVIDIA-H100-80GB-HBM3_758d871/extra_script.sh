# EXTRA of this call (an untracked helper, tmp_extra2.sh, beside the committed tree at 758d871); the call:
# timeout 580 env AUTOGLM_GIT_COMMIT=758d871 TESTS_GPU=1 TEST_MARK= TEST_FILES="tests/test_decode_attention.py tests/test_engine.py tests/test_patch_gpu.py" TEST_JOBS=3 TEST_TIMEOUT=200 SKIP_BENCH=1 EXTRA="bash tmp_extra2.sh" EXTRA_TIMEOUT=410 make gpu-check (2x H100)
# Session 25, call 2 (untracked helper; copied into the results folder as extra_script.sh)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
T() { timeout 80 python3 bench/tune_decode_attention.py --splits 0 "$@" 2>&1 | grep -E "^(llama|glm)" ; }
echo "== short lengths in long caches (reduce-kernel path walks / writes directly since 758d871)"
T --contexts 64,128,256 --capacity-mult 16 --json $R/tune_short_x16.json
T --contexts 256,1024 --capacity-mult 4 --json $R/tune_x4.json
echo "== full caches"
T --contexts 256,1024,8192,32768 --json $R/tune_full.json
echo "== waiting for the tests on GPU 1"
while [ ! -s $R/tests.log ]; do sleep 3; done; sleep 2
b() { timeout 110 python3 -m autoglm_kernels bench "$@" 2>&1 | tail -4; }
echo "== e2e Llama-3.2-1B graph-stock, patched (alone)"; b --models llama3.2-1b --modes graph-stock,patched --json $R/e2e_1b.json
echo "== e2e Llama-3.1-8B graph-stock, patched"; b --models llama3.1-8b --modes graph-stock,patched --json $R/e2e_8b.json
echo "== e2e GLM-4-9B patched"; b --models glm4-9b --modes patched --json $R/e2e_glm.json
