# EXTRA of this call (an untracked helper, tmp_extra7.sh, beside the committed tree); the call:
# AUTOGLM_GIT_COMMIT=44252fd SKIP_TESTS=1 SKIP_BENCH=1 EXTRA='bash tmp_extra7.sh' EXTRA_TIMEOUT=470 make gpu-check (1x H100)
# Session 23, call 7 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
T="python3 bench/tune_decode_attention.py --models llama3.1-8b,glm4-9b"
for rep in a b c; do for hm in 0 1; do
  AUTOGLM_DECODE_HEAD_MAJOR=$hm timeout 60 $T --contexts 1024,8192,32768 --capacity-mult 1 --splits 0 --json $R/ab_c1_hm${hm}_$rep.json > $R/ab_c1_hm${hm}_$rep.log 2>&1
  AUTOGLM_DECODE_HEAD_MAJOR=$hm timeout 60 $T --contexts 1024,8192 --capacity-mult 4 --splits 0 --json $R/ab_c4_hm${hm}_$rep.json > $R/ab_c4_hm${hm}_$rep.log 2>&1
  echo "hm=$hm $rep"; cat $R/ab_c1_hm${hm}_$rep.log $R/ab_c4_hm${hm}_$rep.log | cut -c1-112
done; done
AUTOGLM_DECODE_HEAD_MAJOR=1 timeout 150 python3 -m pytest tests/test_decode_attention.py tests/test_engine.py -m gpu -q -p no:cacheprovider > $R/tests_head_major.log 2>&1; echo "tests rc=$?"; tail -2 $R/tests_head_major.log
AUTOGLM_DECODE_HEAD_MAJOR=1 timeout 130 python3 -m pytest bench/bench_decode_attention.py --benchmark-only -q -p no:cacheprovider --benchmark-json=$R/bench_decode_attention.json > $R/bench_decode_attention.log 2>&1; echo "bench rc=$?"
python3 bench/report.py $R > $R/report_stdout.log 2>&1; echo "report rc=$?"; grep -E "^\| decode_attention" $R/REPORT.md | cut -c1-150
