# EXTRA of this call (an untracked helper, tmp_extra3.sh, beside the committed tree at 4da0d4b); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=4da0d4b SKIP_BUILD=1 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra3.sh" EXTRA_TIMEOUT=540 make gpu-check (1x H100)
# Session 27, call 3 (untracked helper; copied into the results folder as extra_script.sh).
# tmp_old_decode_attention.py: decode_attention.py of 6b7d608 (the two-pass reduce kernel), swapped in for the "old" runs.
R=$RESULTS_DIR
export PYTHONPATH=$PWD
F=autoglm_kernels/triton/decode_attention.py
cp $F /tmp/new_decode_attention.py
t() {  # label, env...
  lab=$1; shift
  if [ $lab = old ] || [ ${lab%_*} = old ]; then cp tmp_old_decode_attention.py $F; else cp /tmp/new_decode_attention.py $F; fi
  echo "== tune $lab ($*)"
  timeout 90 env "$@" python3 bench/tune_decode_attention.py --models glm4-9b,llama3.1-8b --contexts 1024,8192,32768 --splits 0 \
    --json $R/tune_$lab.json > $R/tune_$lab.log 2>&1; echo "rc=$?"; grep -E "^\s*(glm|llama)|default" $R/tune_$lab.log | head -12
}
t old AUTOGLM_X=0
t onepass AUTOGLM_X=0
t trig AUTOGLM_DECODE_REDUCE_TRIGGER_FIRST=1
t trigpre AUTOGLM_DECODE_REDUCE_TRIGGER_FIRST=1 AUTOGLM_DECODE_PREFETCH_TILES=2
t old_2 AUTOGLM_X=0
t onepass_2 AUTOGLM_X=0
t trig_2 AUTOGLM_DECODE_REDUCE_TRIGGER_FIRST=1
cp /tmp/new_decode_attention.py $F
echo "== decode attention tests, unfiltered"
timeout 200 python3 -m pytest tests/test_decode_attention.py -q -p no:cacheprovider -rfE --tb=short > $R/tests_decode_attention_all.log 2>&1; echo "rc=$?"; tail -3 $R/tests_decode_attention_all.log
echo "== bench_decode_attention.py"
timeout 120 python3 -m pytest bench/bench_decode_attention.py --benchmark-only -q -p no:cacheprovider --benchmark-json=$R/bench_decode_attention.json > $R/bench_decode_attention.log 2>&1; echo "rc=$?"
python3 bench/report.py $R > $R/report_stdout.log 2>&1; echo "report rc=$?"; grep -E "decode_attention" $R/REPORT.md | head -30
