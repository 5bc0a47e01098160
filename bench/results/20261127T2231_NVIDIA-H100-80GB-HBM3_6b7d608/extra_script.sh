# EXTRA of this call (an untracked helper, tmp_extra2.sh, beside the committed tree at 6b7d608); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=6b7d608 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra2.sh" EXTRA_TIMEOUT=440 make gpu-check (1x H100)
# Session 27, call 2 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
echo "== captured 1B decode step: ring depth by grid (default) against 2 batches everywhere, three alternations"
for i in 1 2 3; do
  timeout 80 bash scripts/step_variants.sh $R llama3.2-1b "rule_$i:AUTOGLM_GEMV_ANY_WARPS=1" "nb2_$i:AUTOGLM_GEMV_STAGES=2"
done
b() { timeout 70 env "$@" 2>&1 | tail -1; }
for a in 1 2; do
  for s in rule 2; do
    echo "== e2e llama3.2-1b patched, stages $s (round $a)"
    if [ $s = rule ]; then b AUTOGLM_GEMV_ANY_WARPS=1 python3 -m autoglm_kernels bench --models llama3.2-1b --modes patched --json $R/e2e_1b_${s}_$a.json
    else b AUTOGLM_GEMV_STAGES=2 python3 -m autoglm_kernels bench --models llama3.2-1b --modes patched --json $R/e2e_1b_nb2_$a.json; fi
  done
done
