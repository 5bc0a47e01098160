# EXTRA of this call (an untracked helper, tmp_extra1.sh, beside the committed tree); the call:
# AUTOGLM_GIT_COMMIT=8c64fb1 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra1.sh" EXTRA_TIMEOUT=420 make gpu-check (1x H100)
# Probes of session 22 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
timeout 150 python3 scripts/gemv_sweep.py --label tiles --json $R/gemv_tiles.jsonl --shapes "" --M 8,16 \
  --kn 4096x4096,4096x4224,4096x4352,4096x4608,4096x5120,4096x5376,4096x6144,2048x2048,2048x2112,2048x3072,2048x4224 > $R/gemv_tiles.log 2>&1; echo "gemv tiles rc=$?"
tail -30 $R/gemv_tiles.log
timeout 60 env AUTOGLM_GEMV_ANY_WARPS=0 python3 scripts/gemv_sweep.py --label anywarps0 --json $R/gemv_tiles.jsonl --shapes "" --M 16 \
  --kn 4096x4224,4096x4608 > $R/gemv_tiles_any0.log 2>&1; echo "rc=$?"; tail -3 $R/gemv_tiles_any0.log
for c in 1 4; do
timeout 120 python3 bench/tune_decode_attention.py --models llama3.1-8b,glm4-9b --contexts 1024,2048 --capacity-mult $c \
  --splits 0,8,16,24,32,33,48,64 --json $R/tune_da_c$c.json > $R/tune_da_c$c.log 2>&1; echo "tune c=$c rc=$?"; cat $R/tune_da_c$c.log | tail -6
done
