# EXTRA of this call (an untracked helper, tmp_extra2.sh, beside the committed tree at 19da054); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=19da054 SKIP_BUILD=1 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra2.sh" EXTRA_TIMEOUT=500 make gpu-check (1x H100)
# Session 28, call 2 (untracked helper; copied into the results folder as extra_script.sh). No build (Triton only).
# The persistent-grid lead approximated with the existing knobs: one split program per SM
# (AUTOGLM_DECODE_PROGRAMS_PER_SM=1: Llama-3.1-8B 8k gets 16 splits of 8 tiles, ~one program per SM
# walking 8 tiles in one pipeline) with deeper pipelines (STAGES 4-6) and 8 warps, against the
# defaults (2 programs per SM for Llama's G = 4, 1 for GLM-4's G = 16; 3 stages, 4 warps), alternating.
export CUDA_VISIBLE_DEVICES=0 PYTHONPATH=$PWD
R=$RESULTS_DIR
run() {  # label, env...
  local lab=$1; shift
  echo "== $lab ($*) t=$SECONDS s"
  env "$@" timeout 70 python3 bench/tune_decode_attention.py --models llama3.1-8b,glm4-9b --contexts 8192,32768 --splits 0 \
    --json $R/tune_$lab.json > $R/tune_$lab.log 2>&1
  echo "rc=$?"; grep -E "^\s*(glm|llama)" $R/tune_$lab.log | cut -c1-105
}
run base X=0
run p1s4 AUTOGLM_DECODE_PROGRAMS_PER_SM=1 AUTOGLM_DECODE_STAGES=4
run p1s6 AUTOGLM_DECODE_PROGRAMS_PER_SM=1 AUTOGLM_DECODE_STAGES=6
run p1s4w8 AUTOGLM_DECODE_PROGRAMS_PER_SM=1 AUTOGLM_DECODE_STAGES=4 AUTOGLM_DECODE_WARPS=8
run p2s4 AUTOGLM_DECODE_PROGRAMS_PER_SM=2 AUTOGLM_DECODE_STAGES=4
run base_2 X=0
run p1s4_2 AUTOGLM_DECODE_PROGRAMS_PER_SM=1 AUTOGLM_DECODE_STAGES=4
run p1s6_2 AUTOGLM_DECODE_PROGRAMS_PER_SM=1 AUTOGLM_DECODE_STAGES=6
