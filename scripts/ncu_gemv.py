"""One call of fused_linear per decode shape (weights cold in L2), for Nsight Compute:

    ncu --kernel-name regex:gemv_kernel --section SpeedOfLight --section Occupancy python scripts/ncu_gemv.py [NAME ...]

NAME: keys of SHAPES (default: the qkv/o shapes). The > 64 MiB shapes take the GEMV only with
AUTOGLM_GEMV_MAX_WEIGHT_MIB raised. NCU_GEMV_ROWS=1,16 (default 1): the rows M of x, one call
each; NCU_GEMV_STOCK=1 adds one stock F.linear call after each (cuBLAS, for comparison).
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from common import stock_linear  # noqa: E402

from autoglm_kernels import ops  # noqa: E402

SHAPES = {  # name -> (K, N, bias, activation)
    "glm4-9b qkv": (4096, 4608, True, "none"), "llama3.1-8b qkv": (4096, 6144, False, "none"),
    "llama3.1-8b o_proj": (4096, 4096, False, "none"), "llama3.2-1b qkv": (2048, 3072, False, "none"),
    "llama3.1-8b down_proj": (14336, 4096, False, "none"),
    "llama3.1-8b gate_up": (4096, 28672, False, "gated_silu"),
}
DEFAULT = ("glm4-9b qkv", "llama3.1-8b qkv", "llama3.1-8b o_proj", "llama3.2-1b qkv")
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")


ROWS = [int(m) for m in os.environ.get("NCU_GEMV_ROWS", "1").split(",")]
STOCK = os.environ.get("NCU_GEMV_STOCK", "0") == "1"
for name in sys.argv[1:] or DEFAULT:
    K, N, bias, act = SHAPES[name]
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, device="cuda", dtype=torch.bfloat16) if bias else None
    for m in ROWS:
        x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
        for fn in (ops.fused_linear, stock_linear) if STOCK else (ops.fused_linear,):
            flush.zero_()
            torch.cuda.synchronize()
            fn(x, w, b, act)
            torch.cuda.synchronize()
        print(name, f"M={m}", "fused, stock" if STOCK else "fused", "done")
