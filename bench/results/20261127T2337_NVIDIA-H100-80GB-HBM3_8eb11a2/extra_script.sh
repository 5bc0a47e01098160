# EXTRA of this call (an untracked helper, tmp_extra1.sh, beside the committed tree at 8eb11a2); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=8eb11a2 CUDA_VISIBLE_DEVICES=0 TESTS_GPU=1 TEST_JOBS=3 TEST_TIMEOUT=240 SKIP_BENCH=1 EXTRA="bash tmp_extra1.sh" EXTRA_TIMEOUT=420 make gpu-check (2x H100)
# Session 28, call 1 (untracked helper; copied into the results folder as extra_script.sh).
# GPU 0: end to end at long prompts (2048 / 8192 tokens: caches of 4096 / 16384, the reduce-kernel
# path of decode attention), stock / graph-stock / patched, Llama-3.1-8B and GLM-4-9B.
# After the -m gpu tests on GPU 1 end: the tests that need 2 GPUs (tensor parallel, device_map,
# foundation), if time is left.
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
for P in 2048 8192; do
  for M in llama3.1-8b glm4-9b; do
    echo "== e2e $M prompt $P: stock, graph-stock, patched (128 new tokens, 2 timed runs each)"
    timeout 125 python3 -m autoglm_kernels bench --models $M --modes stock,graph-stock,patched --prompt-len $P \
      --repeats 2 --json $R/e2e_${M}_p$P.json > $R/e2e_${M}_p$P.log 2>&1
    echo "rc=$? (t=$SECONDS s)"; grep -E "^\s*(llama|glm)" $R/e2e_${M}_p$P.log | cut -c1-150
  done
done
echo "== waiting for the tests on GPU 1 (t=$SECONDS s)"
while [ ! -s $R/tests.log ]; do sleep 3; done; sleep 2
if [ $SECONDS -lt 330 ]; then
  echo "== 2-GPU tests (t=$SECONDS s)"
  CUDA_VISIBLE_DEVICES=0,1 timeout $((420 - SECONDS)) python3 -m pytest tests/test_tensor_parallel.py tests/test_patch_gpu.py \
    tests/test_foundation.py -k "two_gpus or device_map_over_two or foundation" -m gpu -q -p no:cacheprovider -rfE --tb=short \
    > $R/tests_two_gpus.log 2>&1
  echo "rc=$?"; tail -3 $R/tests_two_gpus.log
else
  echo "== 2-GPU tests skipped: no time left (t=$SECONDS s)"
fi
