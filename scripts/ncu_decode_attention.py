"""One decode_attention call and one SDPA call per case (K/V cold in L2), for Nsight Compute:

    ncu --profile-from-start off --clock-control none --section SpeedOfLight --section LaunchStats \
        python scripts/ncu_decode_attention.py

Only the timed calls run between cudaProfilerStart/Stop (compiles and warm-up calls are outside).
The kernels of each case appear in the order printed first: ours (split, then reduce unless the
splits merge in the kernel), then SDPA over exactly the valid tokens. For #6: how the ~7.5 us per
call that is not streaming splits between the two kernels, and each kernel's DRAM throughput.

NCU_DA_CASES=name:L:C:splits,... (e.g. llama3.1-8b:1024:4096:0,llama3.1-8b:1024:4096:16) replaces
the cases: L valid tokens of a static cache of capacity C, `splits` KV splits (0: the default);
SDPA then runs over the valid L tokens only.
"""
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from tune_decode_attention import SHAPES  # noqa: E402  (name -> Hq, Hk, D: the tune script's shapes)

from autoglm_kernels import ops  # noqa: E402

CASES = [("glm4-9b", 8192, 8192, 0), ("llama3.1-8b", 8192, 8192, 0), ("glm4-9b", 32768, 32768, 0),
         ("llama3.1-8b", 32768, 32768, 0)]  # name, valid tokens, capacity, splits (0: default)
if os.environ.get("NCU_DA_CASES"):
    CASES = [(n, int(L), int(C), int(s)) for n, L, C, s in
             (c.split(":") for c in os.environ["NCU_DA_CASES"].split(","))]
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
runs = []
for name, L, C, splits in CASES:
    hq, hk, D = SHAPES[name]
    q = torch.randn(1, 1, hq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hk, C, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, hk, C, D, device="cuda", dtype=torch.bfloat16)
    kv_lens = torch.full((1,), L, dtype=torch.int32, device="cuda")
    counters = torch.zeros(ops.decode_attention_counters(q, k), dtype=torch.int32, device="cuda")

    def ours(q=q, k=k, v=v, kv_lens=kv_lens, counters=counters, splits=splits):
        return ops.decode_attention(q, k, v, kv_lens, num_splits=splits or None, counters=counters)

    def sdpa(q=q, k=k, v=v, hq=hq, hk=hk, L=L):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k[:, :, :L], v[:, :, :L], enable_gqa=hq != hk)

    ours(), sdpa()  # compile / pick kernels outside the profiled range
    runs.append((f"{name} L={L} C={C} splits={splits or 'default'} ({2 * hk * L * D * 2 / 2**20:.0f} MiB of K/V)",
                 ours, sdpa))
torch.cuda.synchronize()

torch.cuda.profiler.start()
for label, ours, sdpa in runs:
    for fn in (ours, sdpa):
        flush.zero_()
        torch.cuda.synchronize()
        fn()
        torch.cuda.synchronize()
torch.cuda.profiler.stop()
print("profiled, in order:", "; ".join(f"{label}: ours, sdpa" for label, _, _ in runs))
