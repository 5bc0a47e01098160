# EXTRA of this call (an untracked helper, tmp_extra4.sh); the call (tests under the knob at 1):
# AUTOGLM_GIT_COMMIT=b47b621 AUTOGLM_DECODE_PROGRAMS_PER_SM=1 TESTS_GPU=1 TEST_FILES=tests/test_decode_attention.py
# TEST_TIMEOUT=150 SKIP_BENCH=1 EXTRA="bash tmp_extra4.sh" EXTRA_TIMEOUT=240 make gpu-check (2x H100)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
for v in AUTOGLM_DECODE_PROGRAMS_PER_SM=2 AUTOGLM_DECODE_PROGRAMS_PER_SM=1 AUTOGLM_DECODE_STAGES=2; do
  n=probe_${v#AUTOGLM_DECODE_}
  env AUTOGLM_DECODE_PROGRAMS_PER_SM=2 $v timeout 75 python3 -m pytest bench/bench_decode_attention.py --benchmark-only -q -p no:cacheprovider --benchmark-json=$R/$n.json > $R/$n.log 2>&1; echo "$v rc=$?"
done
