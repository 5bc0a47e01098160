"""One decode_attention call and one SDPA call per case (K/V cold in L2), for Nsight Compute:

    ncu --profile-from-start off --clock-control none --section SpeedOfLight --section LaunchStats \
        python scripts/ncu_decode_attention.py

Only the timed calls run between cudaProfilerStart/Stop (compiles and warm-up calls are outside).
The kernels of each case appear in the order printed first: ours (split, then reduce unless the
splits merge in the kernel), then SDPA over exactly the valid tokens. For #6: how the ~7.5 us per
call that is not streaming splits between the two kernels, and each kernel's DRAM throughput.
"""
import torch
import torch.nn.functional as F

from autoglm_kernels import ops

CASES = [("glm4-9b", 32, 2, 8192), ("llama3.1-8b", 32, 8, 8192), ("glm4-9b", 32, 2, 32768),
         ("llama3.1-8b", 32, 8, 32768)]  # name, Hq, Hk, valid tokens (= capacity)
D = 128
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
runs = []
for name, hq, hk, L in CASES:
    q = torch.randn(1, 1, hq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hk, L, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, hk, L, D, device="cuda", dtype=torch.bfloat16)
    kv_lens = torch.full((1,), L, dtype=torch.int32, device="cuda")
    counters = torch.zeros(ops.decode_attention_counters(q, k), dtype=torch.int32, device="cuda")

    def ours(q=q, k=k, v=v, kv_lens=kv_lens, counters=counters):
        return ops.decode_attention(q, k, v, kv_lens, counters=counters)

    def sdpa(q=q, k=k, v=v, hq=hq, hk=hk):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, enable_gqa=hq != hk)

    ours(), sdpa()  # compile / pick kernels outside the profiled range
    runs.append((f"{name} L={L} ({2 * hk * L * D * 2 / 2**20:.0f} MiB of K/V)", ours, sdpa))
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
