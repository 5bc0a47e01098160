"""The single Python face of every kernel.

Each op has: a typed wrapper that checks its inputs and raises a clear ValueError/TypeError
(what was wrong, what is expected) instead of crashing in a kernel; and a fake (meta)
implementation so it works under torch.compile and CUDA-graph capture. Native ops are
defined in csrc/ops.cpp (TORCH_LIBRARY); Triton ops are torch.library.triton_op's defined
in autoglm_kernels/triton/ and imported here. Nothing else calls torch.ops.autoglm.* directly.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import torch

from . import _native

NATIVE_OK, NATIVE_WHY = _native.load()

# name -> (available on this machine, reason when not). Filled by each section; read by doctor.
KERNELS: dict[str, tuple[bool, str]] = {}


# ---------------------------------------------------------------------------------------------
# input checks shared by every wrapper
# ---------------------------------------------------------------------------------------------
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(
    name: str,
    t,
    *,
    dtypes: Optional[Iterable[torch.dtype]] = None,
    dim: Optional[int | Iterable[int]] = None,
    contiguous: bool = False,
) -> None:
    """Raise a clear TypeError/ValueError when `t` is not a tensor of the expected dtype/rank/layout."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; expected one of: {want}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if t.dim() not in dims:
            raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()} for shape {tuple(t.shape)}); call .contiguous()")


def check_same(what: str, **tensors) -> None:
    """All given tensors (None skipped) share device (what='device') or dtype (what='dtype')."""
    items = [(k, getattr(v, what)) for k, v in tensors.items() if v is not None]
    if len({v for _, v in items}) > 1:
        listing = ", ".join(f"{k} on {v}" if what == "device" else f"{k}: {str(v).replace('torch.', '')}" for k, v in items)
        raise (ValueError if what == "device" else TypeError)(f"tensors must share one {what}; got {listing}")


def triton_runnable(device: torch.device) -> bool:
    """True where Triton kernels can run on tensors of `device`: CUDA, or CPU under TRITON_INTERPRET=1."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _native_reason(device_type: str) -> tuple[bool, str]:
    if not NATIVE_OK:
        return False, NATIVE_WHY
    if device_type == "cuda" and not _native.build_info()["cuda"]:
        return False, "_C was built without CUDA (no toolkit at build time, or AUTOGLM_KERNELS_CPU_ONLY=1)"
    if device_type == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device visible"
    return True, ""


# ---------------------------------------------------------------------------------------------
# fused linear + activation (csrc/linear/)
# ---------------------------------------------------------------------------------------------
ACTIVATIONS = ("none", "relu", "gelu", "silu", "gated_silu")
