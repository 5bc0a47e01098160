# EXTRA of this call (an untracked helper, tmp_extra6.sh, beside the committed tree); the call:
# export PYTHONPATH=$PWD; AUTOGLM_GIT_COMMIT=d5e9a93 SKIP_BUILD=1 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA='bash tmp_extra6.sh' EXTRA_TIMEOUT=420 make gpu-check (1x H100; no build: Triton only)
# Session 23, call 6 (untracked helper; copied into the results folder as extra_script.sh)
R=$RESULTS_DIR
T="python3 bench/tune_decode_attention.py --models llama3.1-8b,glm4-9b"
for rep in a b; do for hm in 0 1; do
  AUTOGLM_DECODE_HEAD_MAJOR=$hm timeout 60 $T --contexts 1024,2048 --capacity-mult 4 --splits 16 --json $R/tune_c4_hm${hm}_$rep.json > $R/tune_c4_hm${hm}_$rep.log 2>&1
  echo "c4 hm=$hm $rep rc=$?"; cat $R/tune_c4_hm${hm}_$rep.log
done; done
for hm in 0 1; do
  AUTOGLM_DECODE_HEAD_MAJOR=$hm timeout 60 $T --contexts 1024,8192,32768 --capacity-mult 1 --splits 0 --json $R/tune_c1_hm$hm.json > $R/tune_c1_hm$hm.log 2>&1
  echo "c1 hm=$hm rc=$?"; cat $R/tune_c1_hm$hm.log
done
C=llama3.1-8b:1024:4096:0,llama3.1-8b:1024:4096:16
AUTOGLM_DECODE_HEAD_MAJOR=1 NCU_DA_CASES=$C,$C timeout 120 ncu --profile-from-start off --clock-control none --section SpeedOfLight \
  python3 scripts/ncu_decode_attention.py > $R/ncu_head_major.txt 2>&1; echo "ncu rc=$?"
grep -E "profiled, in order|_split_kernel|Duration" $R/ncu_head_major.txt | grep -v "==PROF==" | head -40
