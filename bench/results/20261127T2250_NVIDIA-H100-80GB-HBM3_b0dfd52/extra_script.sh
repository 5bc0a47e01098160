# EXTRA of this call (an untracked helper, tmp_extra4.sh, beside the committed tree at b0dfd52); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=b0dfd52 CUDA_VISIBLE_DEVICES=0 TESTS_GPU=1 TEST_JOBS=3 TEST_TIMEOUT=240 SKIP_BENCH=1 EXTRA="bash tmp_extra4.sh" EXTRA_TIMEOUT=440 make gpu-check (2x H100)
# Session 27, call 4 (untracked helper; copied into the results folder as extra_script.sh).
# tmp_old_decode_attention.py: decode_attention.py of f619abe (the in-kernel merge as a loop over n_used); the "loop"
# runs import a copy of the built package with it (PYTHONPATH=/tmp/oldpkg), so the tests beside see only the tree's code.
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
rm -rf /tmp/oldpkg && mkdir -p /tmp/oldpkg && cp -r autoglm_kernels /tmp/oldpkg/ && cp tmp_old_decode_attention.py /tmp/oldpkg/autoglm_kernels/triton/decode_attention.py
pp() { if [ ${1%_*} = loop ]; then echo /tmp/oldpkg; else echo ""; fi; }
for lab in loop unrolled; do
  PYTHONPATH=$(pp $lab) python3 -P -c "import autoglm_kernels.triton.decode_attention as m; print('$lab ->', m.__file__)"
done
echo "== e2e GLM-4-9B graph-stock, patched (beside the tests)"
timeout 110 python3 -m autoglm_kernels bench --models glm4-9b --modes graph-stock,patched --json $R/e2e_glm.json 2>&1 | tail -3
for lab in loop unrolled loop_2 unrolled_2; do
  echo "== tune $lab (caches of 256 / 512 tokens, full)"
  PYTHONPATH=$(pp $lab) timeout 60 python3 bench/tune_decode_attention.py --contexts 256,512 --splits 0 --json $R/tune_$lab.json > $R/tune_$lab.log 2>&1
  echo "rc=$?"; grep -E "^\s*(glm|llama)" $R/tune_$lab.log | cut -c1-110
done
for lab in loop unrolled loop_2 unrolled_2; do
  echo "== 1B captured step, $lab (graph GPU ms at 64 / 192 / 256 valid tokens: walked, 3 and 4 splits merged in the kernel)"
  PYTHONPATH=$(pp $lab) timeout 70 python3 bench/step_breakdown.py --models llama3.2-1b --modes patched --gpu-lengths 64,192,256 \
    --json $R/step_$lab.json 2>&1 | grep -v Warning | tail -1 | cut -c1-400
done
echo "== waiting for the tests on GPU 1"
while [ ! -s $R/tests.log ]; do sleep 3; done; sleep 2
echo "== decode attention's unmarked tests on GPU 1 (16-bit inputs there), beside the 1B e2e"
( CUDA_VISIBLE_DEVICES=1 timeout 150 python3 -m pytest tests/test_decode_attention.py -m "not gpu" -q -p no:cacheprovider -rfE --tb=short \
    > $R/tests_decode_attention_unmarked.log 2>&1; echo "unmarked decode attention tests rc=$?" >> $R/tests_decode_attention_unmarked.log ) &
echo "== e2e Llama-3.2-1B graph-stock, patched"
timeout 80 python3 -m autoglm_kernels bench --models llama3.2-1b --modes graph-stock,patched --json $R/e2e_1b.json 2>&1 | tail -3
wait
tail -2 $R/tests_decode_attention_unmarked.log
