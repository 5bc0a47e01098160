# EXTRA of this call (an untracked helper, tmp_extra2.sh, beside the committed tree at fa73425); the call:
# timeout 588 env CUDA_VISIBLE_DEVICES=0 AUTOGLM_GIT_COMMIT=fa73425 TESTS_GPU=1 TEST_JOBS=3 TEST_TIMEOUT=240 TEST_FILES="tests/test_prefill_attention.py tests/test_engine.py tests/test_patch_gpu.py" BENCH_FILES="bench/bench_prefill_attention.py" BENCH_TIMEOUT=100 EXTRA="bash tmp_extra2.sh" EXTRA_TIMEOUT=420 make gpu-check (2x H100)
# Session 29, call 2 (untracked helper; copied into the results folder as extra_script.sh).
# GPU 0, beside the tests on GPU 1: the prefill launch-shape sweep at the new defaults; then, once
# the tests are done, end to end for the README's headline table: stock / graph-stock / patched,
# the five reference models in one process (prompt 128, 128 new tokens, 3 repeats).
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
echo "== prefill sweep (t=$SECONDS s)"
timeout 150 python3 scripts/prefill_sweep.py --json $R/prefill_sweep.jsonl > $R/prefill_sweep.log 2>&1
echo "sweep rc=$?"; grep -v Warning $R/prefill_sweep.log | tail -32
echo "== waiting for the tests (t=$SECONDS s)"
while [ ! -s $R/tests.log ]; do sleep 3; done
cat $R/tests.log
echo "== e2e (t=$SECONDS s)"
timeout 345 python3 -m autoglm_kernels bench --models llama3.2-1b,opt-1.3b,llama3.1-8b,glm4-9b,autoglm-phone-9b \
  --modes stock,graph-stock,patched --json $R/e2e.json > $R/e2e.log 2>&1
echo "e2e rc=$?"; grep -E "^\s*(llama|glm|opt|autoglm)" $R/e2e.log | cut -c1-150
echo "== done (t=$SECONDS s)"
