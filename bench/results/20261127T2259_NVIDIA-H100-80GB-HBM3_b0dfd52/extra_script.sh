# EXTRA of this call (an untracked helper, tmp_extra5.sh, beside the committed tree at b0dfd52); the call:
# timeout 585 env AUTOGLM_GIT_COMMIT=b0dfd52 SKIP_TESTS=1 SKIP_BENCH=1 EXTRA="bash tmp_extra5.sh" EXTRA_TIMEOUT=440 make gpu-check (1x H100)
# Session 27, call 5 (untracked helper; copied into the results folder as extra_script.sh).
# tmp_old_decode_attention.py: decode_attention.py of f619abe (the in-kernel merge as a loop over n_used); the "loop"
# runs import a copy of the built package with it (PYTHONPATH=/tmp/oldpkg).
R=$RESULTS_DIR
rm -rf /tmp/oldpkg && mkdir -p /tmp/oldpkg && cp -r autoglm_kernels /tmp/oldpkg/ && cp tmp_old_decode_attention.py /tmp/oldpkg/autoglm_kernels/triton/decode_attention.py
pp() { if [ ${1%_*} = loop ]; then echo /tmp/oldpkg; else echo ""; fi; }
cat > /tmp/regs.py <<'PY'
import torch, autoglm_kernels.triton.decode_attention as da
from autoglm_kernels import ops
print(da.__file__)
for name, (Hq, Hk, D) in {"glm4-9b": (32, 2, 128), "llama3.1-8b": (32, 8, 128), "llama3.2-1b": (32, 8, 64)}.items():
    q = torch.randn(1, 1, Hq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, Hk, 256, D, device="cuda", dtype=torch.bfloat16)
    ops.decode_attention(q, k, k.clone(), torch.tensor([256], device="cuda"))
torch.cuda.synchronize()
for entry in da._split_kernel.device_caches.values():
    for c in (entry if isinstance(entry, tuple) else (entry,)):
        for kern in (c.values() if isinstance(c, dict) else ()):
            if hasattr(kern, "n_regs"):
                print("split kernel variant: regs", kern.n_regs, "spills", kern.n_spills,
                      "shared", getattr(getattr(kern, "metadata", None), "shared", "?"))
PY
for lab in loop unrolled; do
  echo "== registers, $lab"; PYTHONPATH=$(pp $lab) timeout 60 python3 -P /tmp/regs.py 2>&1 | grep -v Warn | tail -5
done
for i in 1 2; do
  for m in llama3.1-8b llama3.2-1b; do
    for v in loop unrolled; do
      lab=${v}_${m}_$i
      echo "== captured step, $m, $v (round $i; graph GPU ms at 64 / 192 / 256 valid tokens)"
      PYTHONPATH=$(pp $v) timeout 80 python3 bench/step_breakdown.py --models $m --modes patched --gpu-lengths 64,192,256 \
        --json $R/step_$lab.json 2>&1 | grep -v Warning | tail -1 | cut -c1-230
    done
  done
done
