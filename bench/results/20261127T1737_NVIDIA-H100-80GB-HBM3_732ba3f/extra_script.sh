# EXTRA of this call (an untracked helper, tmp_extra1.sh, beside the committed tree at 732ba3f); the call:
# timeout 580 env AUTOGLM_GIT_COMMIT=732ba3f TESTS_GPU=1 TEST_FILES="tests/test_linear.py tests/test_qkv_rope.py tests/test_linear_norm.py" TEST_JOBS=3 TEST_TIMEOUT=400 SKIP_BENCH=1 EXTRA="bash tmp_extra1.sh" EXTRA_TIMEOUT=400 make gpu-check (2x H100); the outer timeout ended it inside the stages2 sweep (stages4, pps1, pps4, default_r2 did not run)
# Session 25, call 1 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
echo "== tests/test_tensor_parallel.py, every test, both GPUs"
s=$(date +%s)
timeout 330 python3 -m pytest tests/test_tensor_parallel.py -q -p no:cacheprovider -rfE --tb=short -s \
  > $R/tests_tensor_parallel_all.log 2>&1
echo "rc=$? in $(( $(date +%s) - s )) s"; grep -E "greedy|passed|failed|error" $R/tests_tensor_parallel_all.log | tail -8
export CUDA_VISIBLE_DEVICES=0
T() { timeout 70 python3 bench/tune_decode_attention.py --models llama3.2-1b --splits 0 "$@" 2>&1 | grep -E "llama|SDPA|model" | tail -8; }
run() {  # $1: tag, rest: env assignments
  local tag=$1; shift
  echo "== d64 $tag"
  env "$@" bash -c "$(declare -f T); T --contexts 256,1024,8192,32768 --json $R/d64_${tag}.json; T --contexts 256,1024 --capacity-mult 4 --json $R/d64_${tag}_x4.json"
}
run default
run tile8k AUTOGLM_DECODE_TILE_BYTES=8192
run tile32k AUTOGLM_DECODE_TILE_BYTES=32768
run warps2 AUTOGLM_DECODE_WARPS=2
run warps8 AUTOGLM_DECODE_WARPS=8
run tile8k_warps2 AUTOGLM_DECODE_TILE_BYTES=8192 AUTOGLM_DECODE_WARPS=2
run stages2 AUTOGLM_DECODE_STAGES=2
run stages4 AUTOGLM_DECODE_STAGES=4
run pps1 AUTOGLM_DECODE_PROGRAMS_PER_SM=1
run pps4 AUTOGLM_DECODE_PROGRAMS_PER_SM=4
run default_r2
