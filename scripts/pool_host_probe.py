"""Host time of small per-step operations on tensors inside a MemoryPool region vs outside it
(a generate is host-bound: a copy or sync that costs more on pool memory shows in tok/s):
`.item()` of a 1-element tensor (device-to-host copy + sync), a tiny kernel launch, alloc + free.

    python scripts/pool_host_probe.py            (AUTOGLM_POOL_VMM=0: cudaMalloc-backed segments)
"""
import json
import os
import time

import torch

from autoglm_kernels.memory import MemoryPool


def host_us(fn, n=3000):
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - t) / n * 1e6, 2)


def probe(tag):
    b = torch.ones(1, device="cuda", dtype=torch.bool)
    v = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    return {f"{tag} item": host_us(lambda: b.item()), f"{tag} cpu()": host_us(lambda: v[:4].cpu()),
            f"{tag} add_": host_us(lambda: v.add_(1)), f"{tag} empty+free": host_us(lambda: torch.empty(8192, device="cuda"))}


res = {"vmm": os.environ.get("AUTOGLM_POOL_VMM", "1")}
res.update(probe("stock"))
pool = MemoryPool()
with pool:
    res.update(probe("pool"))
res.update(probe("stock again"))
pool.close()
print(json.dumps(res))
