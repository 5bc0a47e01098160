#!/usr/bin/env bash
# GPU time of the captured decode step and ms per step in generate under environment variants,
# each in its own process (the switches are read once per process):
#   scripts/step_variants.sh OUTDIR MODELS "name1:ENV=V ENV2=W" "name2:ENV=V" ...
# writes OUTDIR/step_<name>.json (bench/step_breakdown.py, patched mode) per variant.
set -uo pipefail
out=$1 models=$2
shift 2
mkdir -p "$out"
for spec in "$@"; do
  name=${spec%%:*} envs=${spec#*:}
  echo "== $name ($envs)"
  env $envs python3 bench/step_breakdown.py --models "$models" --modes patched --json "$out/step_$name.json" \
    2>&1 | grep -v Warning | tail -4
done
