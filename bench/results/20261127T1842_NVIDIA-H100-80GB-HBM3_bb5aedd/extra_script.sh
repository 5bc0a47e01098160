# EXTRA of this call (an untracked helper, tmp_extra5.sh, beside the committed tree at bb5aedd); the call:
# timeout 590 env AUTOGLM_GIT_COMMIT=bb5aedd TEST_FILES="tests/test_decode_attention.py" TEST_TIMEOUT=90 SKIP_BENCH=1 EXTRA="bash tmp_extra5.sh" EXTRA_TIMEOUT=400 make gpu-check (1x H100)
# Session 25, call 5 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
T() { timeout 90 python3 bench/tune_decode_attention.py "$@" 2>&1 | grep -E "^(llama|glm)"; }
echo "== small capacities, the new default (splits 0) against 8 / 16 and 4"
T --contexts 128,256,512 --capacity-mult 2 --splits 4,8,16 --json $R/small_c_x2.json
T --contexts 512,1024 --splits 4,8,16 --json $R/small_c_full.json
b() { timeout 110 python3 -m autoglm_kernels bench --prompt-len 256 --new-tokens 128 --modes patched "$@" 2>&1 | grep -E "patched"; }
echo "== e2e prompt 256 + 128 new (the 512-token cache bucket): rule on / off / on / off"
for r in 1 2; do
  for t in 8 0; do
    echo "-- MERGE_CAPACITY_TILES=$t, round $r"
    AUTOGLM_DECODE_MERGE_CAPACITY_TILES=$t b --models llama3.1-8b,glm4-9b --json $R/e2e_p256_tiles${t}_r$r.json
  done
done
