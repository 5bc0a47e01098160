# EXTRA of this call (an untracked helper, tmp_extra5.sh, beside the committed tree); the call:
# export PYTHONPATH=$PWD; AUTOGLM_GIT_COMMIT=dac6a76 SKIP_BUILD=1 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA='bash tmp_extra5.sh' EXTRA_TIMEOUT=280 make gpu-check (1x H100; no build: Triton only)
# Session 23, call 5 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
which ncu
C=llama3.1-8b:1024:4096:0,llama3.1-8b:1024:4096:16,llama3.1-8b:1024:1024:0,glm4-9b:1024:4096:0
NCU_DA_CASES=$C,$C,$C timeout 240 ncu --profile-from-start off --clock-control none --section SpeedOfLight --section LaunchStats \
  --section Occupancy python3 scripts/ncu_decode_attention.py > $R/ncu_static_cache.txt 2>&1; echo "ncu rc=$?"
grep -E "profiled, in order|_split_kernel|_reduce_kernel|cudnn|lean_red|Duration|Grid Size|Registers Per|Achieved Occupancy" $R/ncu_static_cache.txt | grep -v "==PROF==" | head -150
