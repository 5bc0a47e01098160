# EXTRA of this call (an untracked helper, tmp_extra3.sh, beside the committed tree); the call:
# AUTOGLM_GIT_COMMIT=ea9d0ea, the same as the call before with EXTRA="bash tmp_extra3.sh" EXTRA_TIMEOUT=330 (2x H100)
# Session 22, call 3 (untracked helper; copied into the results folder as extra_script.sh)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
KN=4096x4608,4096x5120,4096x4352,8192x544,8192x520,2048x3072,4096x6144
for v in 0 1; do
  timeout 70 env AUTOGLM_GEMV_CLUSTER_SPLIT=$v python3 scripts/gemv_sweep.py --label split$v --json $R/gemv_cluster.jsonl --shapes "" \
    --M 9,12,16 --kn $KN > $R/gemv_cluster_$v.log 2>&1; echo "split=$v rc=$?"; grep -v "^$" $R/gemv_cluster_$v.log
done
timeout 200 python3 -m pytest bench/bench_linear.py --benchmark-only -q -p no:cacheprovider --benchmark-json=$R/bench_linear.json > $R/bench_linear.log 2>&1; echo "bench_linear rc=$?"
tail -1 $R/bench_linear.log
python3 bench/report.py $R > $R/report_stdout.log 2>&1; echo "report rc=$?"
