# EXTRA of this call (an untracked helper, tmp_extra2.sh); the call:
# AUTOGLM_GIT_COMMIT=f7573f6 TEST_FILES=tests/test_tensor_parallel.py TEST_TIMEOUT=200 SANITIZE=1 SANITIZE_TIMEOUT=150
# SANITIZE_FILTER="reference_shapes_decode or split_k_extremes" BENCH_FILES="bench/bench_decode_attention.py
# bench/bench_rmsnorm.py bench/bench_layernorm.py" BENCH_TIMEOUT=120 EXTRA="bash tmp_extra2.sh" EXTRA_TIMEOUT=330 make gpu-check (2x H100)
R=$RESULTS_DIR
echo "== TP tokens fp16"
timeout 250 torchrun --nproc_per_node 2 bench/bench_tp.py --tokens-only --dtype float16 --json $R/tp_fp16_tokens.json > $R/tp_fp16.log 2>&1; echo rc=$?
grep -E "tokens match" $R/tp_fp16.log | tail -4
echo "== GEMV probes, GLM-4 qkv decode"
export CUDA_VISIBLE_DEVICES=0
for v in AUTOGLM_GEMV_STAGES=2 AUTOGLM_GEMV_WARPS_PER_SM=32 AUTOGLM_GEMV_ANY_WARPS=1; do
  n=probe_${v#AUTOGLM_GEMV_}
  env $v timeout 60 python3 -m pytest bench/bench_linear.py --benchmark-only -q -p no:cacheprovider -k "decode and qkv and glm4" --benchmark-json=$R/$n.json > $R/$n.log 2>&1; echo "$v rc=$?"
done
