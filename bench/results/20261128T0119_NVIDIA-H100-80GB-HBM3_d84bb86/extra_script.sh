# EXTRA of this call (an untracked helper, tmp_extra3.sh, beside the committed tree at d84bb86); the call:
# timeout 588 env AUTOGLM_GIT_COMMIT=d84bb86 CUDA_VISIBLE_DEVICES=0 TESTS_GPU=1 TEST_JOBS=3 TEST_TIMEOUT=240 SKIP_BENCH=1 EXTRA="bash tmp_extra3.sh" EXTRA_TIMEOUT=440 make gpu-check (2x H100)
# Session 29, call 3 (untracked helper; copied into the results folder as extra_script.sh).
# After the -m gpu tests of every file on GPU 1 end: the tests that need 2 GPUs (tensor parallel,
# device_map, foundation).
R=$RESULTS_DIR
echo "== waiting for the tests on GPU 1 (t=$SECONDS s)"
while [ ! -s $R/tests.log ]; do sleep 3; done; sleep 2
cat $R/tests.log
echo "== 2-GPU tests (t=$SECONDS s)"
CUDA_VISIBLE_DEVICES=0,1 timeout $((430 - SECONDS)) python3 -m pytest tests/test_tensor_parallel.py tests/test_patch_gpu.py \
  tests/test_foundation.py -k "two_gpus or device_map_over_two or foundation" -m gpu -q -p no:cacheprovider -rfE --tb=short \
  > $R/tests_two_gpus.log 2>&1
echo "rc=$?"; tail -3 $R/tests_two_gpus.log
echo "== done (t=$SECONDS s)"
