# EXTRA of this call (an untracked helper, tmp_extra4.sh, beside the committed tree at df6fa41); the call:
# timeout 570 env AUTOGLM_GIT_COMMIT=df6fa41 TESTS_GPU=1 TEST_MARK= TEST_FILES="tests/test_decode_attention.py tests/test_engine.py" TEST_JOBS=2 TEST_TIMEOUT=300 SKIP_BENCH=1 EXTRA="bash tmp_extra4.sh" EXTRA_TIMEOUT=410 make gpu-check (2x H100)
# Session 24, call 4 (untracked helper; copied into the results folder as extra_script.sh)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
T() { timeout 75 python3 bench/tune_decode_attention.py --splits 0 "$@" 2>&1 | grep -v "^$" | tail -14; }
for v in "CHUNKS=0" "default" "ELEMS=8192 CHUNKS=4" "CHUNKS=8"; do
  unset AUTOGLM_DECODE_MERGE_CHUNKS AUTOGLM_DECODE_MERGE_ELEMS
  case "$v" in
    "CHUNKS=0") export AUTOGLM_DECODE_MERGE_CHUNKS=0;;
    "ELEMS=8192 CHUNKS=4") export AUTOGLM_DECODE_MERGE_ELEMS=8192 AUTOGLM_DECODE_MERGE_CHUNKS=4;;
    "CHUNKS=8") export AUTOGLM_DECODE_MERGE_CHUNKS=8;;
  esac
  tag=$(echo "$v" | tr ' =' '_-')
  echo "== $v: full caches"; T --contexts 256,1024,8192,32768 --json $R/tune_${tag}_full.json
  echo "== $v: 4x caches"; T --contexts 1024,4096,8192 --capacity-mult 4 --json $R/tune_${tag}_x4.json
done
unset AUTOGLM_DECODE_MERGE_CHUNKS AUTOGLM_DECODE_MERGE_ELEMS
echo "== again CHUNKS=0 and default, full caches (alternation)"
AUTOGLM_DECODE_MERGE_CHUNKS=0 T --contexts 1024,8192,32768 --json $R/tune_CHUNKS-0_full_r2.json
T --contexts 1024,8192,32768 --json $R/tune_default_full_r2.json
