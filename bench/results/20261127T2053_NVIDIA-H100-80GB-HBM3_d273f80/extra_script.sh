# EXTRA of this call (an untracked helper, tmp_extra1.sh, beside the committed tree at d273f80); the call:
# timeout 575 env AUTOGLM_GIT_COMMIT=d273f80 CUDA_VISIBLE_DEVICES=0 TESTS_GPU=1 TEST_JOBS=3 TEST_TIMEOUT=240 BENCH_FILES="<the seven kernel bench files>" BENCH_TIMEOUT=120 EXTRA="bash tmp_extra1.sh" EXTRA_TIMEOUT=320 make gpu-check (2x H100)
# Session 26, call 1 (untracked helper; copied into the results folder as extra_script.sh)
export CUDA_VISIBLE_DEVICES=0
R=$RESULTS_DIR
echo "== GEMV knobs on the 1-2B shapes, M = 1 (one process per variant)"
S="1b qkv 2048->3072,1b down 8192->2048,1b o 2048->2048"
for v in "default:" "wps8:AUTOGLM_GEMV_WARPS_PER_SM=8" "wps24:AUTOGLM_GEMV_WARPS_PER_SM=24" "wps32:AUTOGLM_GEMV_WARPS_PER_SM=32" \
         "stages3:AUTOGLM_GEMV_STAGES=3" "stages0:AUTOGLM_GEMV_STAGES=0"; do
  lab=${v%%:*}; kv=${v#*:}
  timeout 60 env $kv python3 scripts/gemv_sweep.py --label $lab --json $R/gemv_small.jsonl --shapes "$S" --kn 2048x8192 --M 1 \
    > $R/gemv_small_$lab.log 2>&1; echo "sweep $lab rc=$?"; grep -v "^$" $R/gemv_small_$lab.log | tail -5
done
b() { timeout 100 python3 -m autoglm_kernels bench "$@" 2>&1 | tail -4; }
echo "== e2e Llama-3.1-8B graph-stock, patched (GPU-bound; beside the tests)"; b --models llama3.1-8b --modes graph-stock,patched --json $R/e2e_8b.json
echo "== e2e GLM-4-9B graph-stock, patched (beside the tests)"; b --models glm4-9b --modes graph-stock,patched --json $R/e2e_glm.json
echo "== waiting for the tests on GPU 1"
while [ ! -s $R/tests.log ]; do sleep 3; done; sleep 2
echo "== e2e Llama-3.2-1B graph-stock, patched (alone)"; b --models llama3.2-1b --modes graph-stock,patched --json $R/e2e_1b.json
