"""Triton kernels, each registered as a torch op with torch.library.triton_op (so they compose
with torch.compile and CUDA-graph capture) and called only through autoglm_kernels.ops."""

import torch

try:
    from torch._library.triton import set_wrap_triton_enabled
except ImportError:  # an older torch: no direct path
    set_wrap_triton_enabled = None


def triton_op(name: str, *, mutates_args):
    """torch.library.triton_op that also keeps a `.direct` entry to the implementation: ops.py
    calls it in plain eager inference, where the dispatcher's custom-op layers would add 20-300
    us of host time per call (see ops._run). Like triton_op's own backend it launches the kernels
    as they are: with wrap_triton enabled, each launch would go through the tracing
    higher-order op instead (about 350 us a call)."""

    def register(fn):
        op = torch.library.triton_op(name, mutates_args=mutates_args)(fn)
        if set_wrap_triton_enabled is None:
            op.direct = op
            return op

        def direct(*args):
            with set_wrap_triton_enabled(False):
                return fn(*args)

        op.direct = direct
        return op

    return register

