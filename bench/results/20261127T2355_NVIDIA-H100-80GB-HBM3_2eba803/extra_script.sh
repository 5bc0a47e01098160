# EXTRA of this call (an untracked helper, tmp_extra3.sh, beside the committed tree at 2eba803); the call:
# timeout 588 env AUTOGLM_GIT_COMMIT=2eba803 SKIP_TESTS=1 BENCH_FILES="<the seven kernel bench files>" BENCH_TIMEOUT=120 EXTRA="bash tmp_extra3.sh" EXTRA_TIMEOUT=330 make gpu-check (1x H100)
# Session 28, call 3 (untracked helper; copied into the results folder as extra_script.sh).
# After the seven kernel benchmark files (REPORT.md): end to end, graph-stock / patched, the five
# reference models (prompt 128, 128 new tokens, 3 repeats), one process per model.
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
for M in llama3.2-1b llama3.1-8b glm4-9b opt-1.3b autoglm-phone-9b; do
  echo "== e2e $M graph-stock, patched (t=$SECONDS s)"
  timeout 95 python3 -m autoglm_kernels bench --models $M --modes graph-stock,patched --json $R/e2e_$M.json > $R/e2e_$M.log 2>&1
  echo "rc=$?"; grep -E "^\s*(llama|glm|opt|autoglm)" $R/e2e_$M.log | cut -c1-150
done
