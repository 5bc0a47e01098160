# EXTRA of this call (an untracked helper, tmp_extra4.sh, beside the committed tree); the call:
# AUTOGLM_GIT_COMMIT=58f8554 TESTS_GPU=1 TEST_JOBS=3 TEST_TIMEOUT=330 TEST_FILES="<every tests/test_*.py but test_tensor_parallel.py>"
# SKIP_BENCH=1 EXTRA="bash tmp_extra4.sh" EXTRA_TIMEOUT=250 make gpu-check (2x H100)
# Session 22, call 4 (untracked helper; copied into the results folder as extra_script.sh): the 2-GPU tests
R=$RESULTS_DIR
timeout 240 python3 -m pytest tests/test_tensor_parallel.py -m gpu -q -p no:cacheprovider -rfE --tb=short > $R/tests_test_tensor_parallel.log 2>&1; echo "tensor_parallel rc=$?"
tail -1 $R/tests_test_tensor_parallel.log
