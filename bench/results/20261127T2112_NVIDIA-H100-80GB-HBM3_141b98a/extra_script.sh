# EXTRA of this call (an untracked helper, tmp_extra3.sh, beside the committed tree at 141b98a); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=141b98a SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra3.sh" EXTRA_TIMEOUT=420 make gpu-check (2x H100)
# Session 26, call 3 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
timeout 400 torchrun --nproc_per_node 2 bench/bench_tp.py --models llama3.1-8b,glm4-9b --json $R/tp.json > $R/tp.log 2>&1
echo "bench_tp rc=$?"; grep -E "TP=2" $R/tp.log
