# EXTRA of this call (an untracked helper, tmp_extra1.sh, beside the committed tree); the call:
# export PYTHONPATH=$PWD; AUTOGLM_GIT_COMMIT=4bbfab9 SKIP_BUILD=1 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA='bash tmp_extra1.sh' EXTRA_TIMEOUT=330 make gpu-check (1x H100)
# Session 23, call 1
set -x
R=$RESULTS_DIR
python3 scripts/probe_grid_cost.py --kib 32 --grids 128,192,264,512 --json $R/grid_cost_nopdl.json > $R/grid_cost_nopdl.log 2>&1
python3 scripts/probe_grid_cost.py --kib 32 --grids 128,192,264,512 --pdl --json $R/grid_cost_pdl.json > $R/grid_cost_pdl.log 2>&1
python3 scripts/probe_grid_cost.py --kib 32 --grids 128,192,264,512 --pdl --warps 8 --json $R/grid_cost_pdl_w8.json > $R/grid_cost_pdl_w8.log 2>&1
T="python3 bench/tune_decode_attention.py --models llama3.1-8b,glm4-9b"
for v in default PDL0 LATE; do
  case $v in default) E="";; PDL0) E="AUTOGLM_PDL=0";; LATE) E="AUTOGLM_DECODE_LATE_TRIGGER=1";; esac
  env $E $T --contexts 1024,2048 --capacity-mult 4 --splits 16 --json $R/tune_c4_$v.json > $R/tune_c4_$v.log 2>&1
done
for v in default PDL0 LATE; do
  case $v in default) E="";; PDL0) E="AUTOGLM_PDL=0";; LATE) E="AUTOGLM_DECODE_LATE_TRIGGER=1";; esac
  env $E $T --contexts 1024,8192,32768 --capacity-mult 1 --splits 0 --json $R/tune_c1_$v.json > $R/tune_c1_$v.log 2>&1
done
tail -n 4 $R/grid_cost_*.log; cat $R/tune_*.log
