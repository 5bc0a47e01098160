# EXTRA of this call (an untracked helper, tmp_extra3.sh, beside the committed tree at 6560226); the call:
# timeout 540 env AUTOGLM_GIT_COMMIT=<stale on the device> SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra3.sh" EXTRA_TIMEOUT=390 make gpu-check (1x H100)
# Session 24, call 3 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
S() { timeout 110 python3 scripts/gemv_sweep.py --shapes "" --M 1,2,4,6,8 "$@" 2>&1 | tail -25; }
for rep in 1 2; do
  for st in default 0; do
    if [ $st = default ]; then unset AUTOGLM_GEMV_STAGES; else export AUTOGLM_GEMV_STAGES=$st; fi
    echo "== rep $rep, AUTOGLM_GEMV_STAGES=$st, no bias"
    S --label "stages_${st}_r$rep" --json $R/stages.jsonl --kn 4096x6144,4096x4096,2048x3072,2048x2048
    echo "== rep $rep, AUTOGLM_GEMV_STAGES=$st, bias"
    S --label "stages_${st}_bias_r$rep" --json $R/stages.jsonl --kn 4096x4608,2048x6144 --bias
  done
done
unset AUTOGLM_GEMV_STAGES
