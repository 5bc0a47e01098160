"""Triton kernels, each registered as a torch op with torch.library.triton_op (so they compose
with torch.compile and CUDA-graph capture) and called only through autoglm_kernels.ops."""

import torch


def triton_op(name: str, *, mutates_args):
    """torch.library.triton_op that also keeps the undecorated implementation as `.direct`:
    ops.py calls that straight in plain eager inference, where the dispatcher's custom-op layers
    would add about 25 us of host time per call (see ops._run)."""

    def register(fn):
        op = torch.library.triton_op(name, mutates_args=mutates_args)(fn)
        op.direct = fn
        return op

    return register
