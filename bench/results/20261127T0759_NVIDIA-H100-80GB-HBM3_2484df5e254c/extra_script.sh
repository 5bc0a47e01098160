#!/usr/bin/env bash
# Session 18 experiments (not committed): prefill down_proj order/burn A/B, GEMV ring at M=16.
R=$(realpath "$RESULTS_DIR")
cd bench
summ() { python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[1].split("/")[-1], [(b["params"]["name"] if "name" in b["params"] else "", b["params"]["M"], b["params"]["impl"], b["extra_info"]["gpu_us"]) for b in d["benchmarks"]])
PY
}
for burn in 0 500; do
  for first in stock fused; do
    second=$([ $first = stock ] && echo fused || echo stock)
    ids=""
    for M in 1024 8192; do
      ids="$ids bench_linear.py::test_fused_linear_prefill[glm4-9b_down_proj-M$M-$first] bench_linear.py::test_fused_linear_prefill[glm4-9b_down_proj-M$M-$second]"
    done
    j=$R/prefill_down_burn${burn}_${first}_first.json
    AUTOGLM_BENCH_BURN_MS=$burn timeout 90 python3 -m pytest $ids --benchmark-only -q -p no:cacheprovider --benchmark-json=$j 2>&1 | grep -E "passed|failed|Error" | tail -2
    summ $j
  done
done
for st in 0 2; do
  j=$R/decode_m16_stages$st.json
  AUTOGLM_GEMV_STAGES=$st timeout 150 python3 -m pytest bench_linear.py -k "decode and M16 and not lm_head" --benchmark-only -q -p no:cacheprovider --benchmark-json=$j 2>&1 | grep -E "passed|failed|Error" | tail -2
done
