"""Tensor-parallel models (transformers `tp_plan="auto"`): local shards, and the collectives the
fused forwards must do themselves.

transformers shards a TP model's linears as DTensor parameters and wraps each sharded Linear's
forward with the layout changes and collectives it needs (colwise: nothing; rowwise: all-reduce
of the partial output; colwise_gather_output: all-gather). The fused forwards bypass those
Linear forwards (they read the weights and call fused_linear), so they work on the local shards
and do the same collectives here: q/k/v and gate/up rows are this rank's heads and MLP columns,
o_proj and down_proj produce partial sums that are all-reduced (bias added once, after), and the
lm_head's vocab shards are all-gathered. Anything else is refused with a reason (the model stays
stock), never run with a wrong layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

try:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # torch built without distributed
    dist = DTensor = Replicate = Shard = None


def is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A DTensor's local shard (the same storage, no copy); any other tensor (or None) as it is."""
    return t._local_tensor if is_dtensor(t) else t


@dataclass
class TensorParallel:
    """The TP group of a model: its process group, its size, and this process's index in it."""

    group: object
    size: int
    rank: int

    def all_reduce_(self, y: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(y, group=self.group)
        return y

    def all_gather_last(self, y: torch.Tensor) -> torch.Tensor:
        """[..., n] shards of equal width from every rank -> [..., size * n] in rank order."""
        y = y.contiguous()
        out = y.new_empty((self.size * y.shape[0], *y.shape[1:]))  # rank shards concatenated along dim 0
        dist.all_gather_into_tensor(out, y, group=self.group)
        return out.view(self.size, *y.shape).movedim(0, -2).reshape(*y.shape[:-1], self.size * y.shape[-1])


def tensor_parallel(model: nn.Module) -> tuple[Optional[TensorParallel], Optional[str]]:
    """(the model's TP group, None) for a model whose DTensor parameters all live on one 1-D mesh;
    (None, None) when nothing is sharded; (None, reason) for layouts the fused paths do not take."""
    dtensors = [p for p in model.parameters() if is_dtensor(p)]
    if not dtensors:
        return None, None
    meshes = {(p.device_mesh.device_type, tuple(p.device_mesh.mesh.flatten().tolist()), p.device_mesh.ndim)
              for p in dtensors}  # by value: transformers may build one mesh object per parallel style
    if len(meshes) > 1:
        return None, f"DTensor parameters on {len(meshes)} different device meshes"
    mesh = dtensors[0].device_mesh
    if mesh.ndim != 1:
        return None, f"a {mesh.ndim}-D device mesh (tensor parallelism is patched on a 1-D mesh only)"
    if not dist.is_initialized():
        return None, "DTensor parameters without an initialized process group"
    # rank = this process's coordinate on the mesh: the index of its shards (and of its slot in
    # an all-gather over the mesh's group, whose ranks follow the mesh order)
    return TensorParallel(group=mesh.get_group(), size=mesh.size(), rank=mesh.get_local_rank()), None


def placement(p) -> Optional[str]:
    """'row' (Shard(0): output features), 'col' (Shard on the last dim: input features),
    'replicate', or None for a plain tensor; anything else -> 'other'."""
    if not is_dtensor(p):
        return None
    (pl,) = p.placements if len(p.placements) == 1 else (None,)
    if isinstance(pl, Replicate):
        return "replicate"
    if type(pl) is Shard and pl.dim in (0, -p.dim()):
        return "row"
    if type(pl) is Shard and pl.dim in (p.dim() - 1, -1):
        return "col"
    return "other"


def even_shards(p, tp: TensorParallel) -> bool:
    """p's local shard is exactly 1/size of it along its sharded dim (so ranks line up by index)."""
    kind = placement(p)
    dim = 0 if kind == "row" else p.dim() - 1
    return p.shape[dim] % tp.size == 0 and local(p).shape[dim] == p.shape[dim] // tp.size


def linear_layout_reason(lin: nn.Linear, want: str, tp: TensorParallel, name: str) -> Optional[str]:
    """None if `lin` is sharded as `want` ('row': colwise, output features split; 'col': rowwise,
    input features split; bias replicated) in equal shards; else why not."""
    got = placement(lin.weight)
    if got != want or not even_shards(lin.weight, tp):
        return (f"{name} is sharded as {got or 'a plain tensor'} (expected {'colwise' if want == 'row' else 'rowwise'} "
                f"shards of equal size)")
    b = lin.bias
    if b is not None and placement(b) != ("row" if want == "row" else "replicate"):
        return f"{name}.bias has an unexpected layout ({placement(b) or 'plain tensor'})"
    return None


def gate_up_rows(gate_up: nn.Linear, tp: TensorParallel) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """GLM's [gate; up] linear, sharded contiguously by transformers (colwise_gather_output: with
    TP=2 rank 0 holds all of gate, rank 1 all of up), as this rank's [gate_r; up_r] rows: the MLP
    columns its down_proj shard (rowwise) multiplies. Gathers the full weight once (patch time)."""
    def mine(p):
        full = p.full_tensor()
        half = full.shape[0] // 2
        n = half // tp.size
        lo = tp.rank * n
        return torch.cat([full[lo: lo + n], full[half + lo: half + lo + n]]).contiguous()

    with torch.no_grad():
        w = mine(gate_up.weight)
        b = mine(gate_up.bias) if gate_up.bias is not None else None
    return w, b
