"""One call of fused_linear per reference qkv/o shape at M=1 (weights cold in L2), for Nsight Compute:

    ncu --kernel-name regex:gemv_kernel --section SpeedOfLight --section Occupancy python scripts/ncu_gemv.py
"""
import torch

from autoglm_kernels import ops

SHAPES = {"glm4-9b qkv": (4096, 4608, True), "llama3.1-8b qkv": (4096, 6144, False),
          "llama3.1-8b o_proj": (4096, 4096, False), "llama3.2-1b qkv": (2048, 3072, False)}
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
for name, (K, N, bias) in SHAPES.items():
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, device="cuda", dtype=torch.bfloat16) if bias else None
    x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    flush.zero_()
    torch.cuda.synchronize()
    ops.fused_linear(x, w, b)
    torch.cuda.synchronize()
    print(name, "done")
