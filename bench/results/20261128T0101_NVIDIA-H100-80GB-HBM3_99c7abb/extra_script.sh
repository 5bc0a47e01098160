# EXTRA of this call (an untracked helper, tmp_extra1.sh, beside the committed tree at 99c7abb); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=99c7abb SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra1.sh" EXTRA_TIMEOUT=480 make gpu-check (1x H100)
# Session 29, call 1 (untracked helper; copied into the results folder as extra_script.sh).
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
echo "== tests (t=$SECONDS s)"
timeout 120 python3 -m pytest -q -m gpu tests/test_linear.py -k rounds_where_stock > $R/tests_linear_rounding.log 2>&1
echo "linear rounding rc=$?"; tail -3 $R/tests_linear_rounding.log
timeout 150 python3 -m pytest -q -m gpu tests/test_prefill_attention.py > $R/tests_prefill_attention.log 2>&1
echo "prefill rc=$?"; tail -3 $R/tests_prefill_attention.log
echo "== prefill sweep (t=$SECONDS s)"
timeout 240 python3 scripts/prefill_sweep.py --json $R/prefill_sweep.jsonl > $R/prefill_sweep.log 2>&1
echo "sweep rc=$?"; cat $R/prefill_sweep.log | grep -v Warning | tail -70
echo "== done (t=$SECONDS s)"
