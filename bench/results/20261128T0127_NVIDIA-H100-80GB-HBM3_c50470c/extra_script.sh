# EXTRA of this call (an untracked helper, tmp_extra4.sh, beside the committed tree at c50470c); the call:
# timeout 470 env AUTOGLM_GIT_COMMIT=c50470c SKIP_TESTS=1 SKIP_BENCH=1 SANITIZE=1 SANITIZE_TIMEOUT=150 EXTRA="bash tmp_extra4.sh" EXTRA_TIMEOUT=190 make gpu-check (1x H100)
# Session 29, call 4 (untracked helper; copied into the results folder as extra_script.sh).
# After `SANITIZE=1` (the fused-linear GPU tests but opcheck under memcheck): the other GPU test
# files whose kernels the final code changed or fused into the GEMV, under memcheck too.
R=$RESULTS_DIR
for f in qkv_rope linear_norm prefill_attention; do
  echo "== memcheck tests/test_$f.py (t=$SECONDS s)"
  timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_$f.py -m gpu -q \
    -p no:cacheprovider -k "not opcheck" > $R/sanitizer_$f.log 2>&1
  echo "exit code $?"; grep -E "ERROR SUMMARY|passed|failed" $R/sanitizer_$f.log | tail -2
done
echo "== done (t=$SECONDS s)"
