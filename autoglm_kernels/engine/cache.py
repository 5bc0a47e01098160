"""Static KV caches for the decode engine, bucketed so CUDA graphs can be reused.

A captured decode step bakes in the addresses of the cache buffers, so generate must see the
same cache object call after call. Caches are keyed by (batch size, capacity bucket): capacity
is the next power of two >= prompt + new tokens (at least `min_len`), capped at the model's
maximum. At most `max_slots` caches are kept (least recently used evicted), so 1,000 generate
calls with varying lengths allocate a bounded set of caches.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer


class EngineCache(StaticCache):
    """A StaticCache the engine owns and resets at each generate call.

    generate marks every cache passed to it as the user's (`_is_user_defined`), which makes it
    treat the cache as returned to the caller and keep the host in lockstep with the device at
    every step. This cache is not the user's (the engine passes it and resets it at the next
    call), so the mark is ignored; `defer_stop` says whether this call may decide to stop one
    step late (see engine/stop.py).
    """

    defer_stop = False
    # The valid length as the host knows it without reading the device: 0 while the cache is
    # fresh (built or reset, no forward run over it yet), None after that (the engine clears it
    # after the first forward). A prompt's forward over a fresh cache reads it instead of syncing
    # on the device counter, which also lets that forward be captured (engine: prefill graphs).
    known_length: int | None = 0

    def reset(self) -> None:
        """Zero every plain StaticLayer (keys, values, length counter) in one foreach call: the
        stock reset launches three kernels per layer from Python, 1-3 ms of host time in front of
        every prefill. Other layer types reset themselves. Once every layer holds its buffers
        (which then never change), the list of them is kept: no walk over the layers per call."""
        plan = self.__dict__.get("_reset_plan")
        if plan is None:
            tensors, others, complete = [], [], True
            for layer in self.layers:
                counter = getattr(layer, "cumulative_length", None)
                if type(layer) is not StaticLayer or not torch.is_tensor(counter):
                    others.append(layer)
                    continue
                if layer.is_initialized:
                    tensors += [layer.keys, layer.values]
                else:
                    complete = False
                tensors.append(counter)
            plan = (tensors, others)
            if complete:
                self._reset_plan = plan
        tensors, others = plan
        for layer in others:
            layer.reset()
        if tensors:
            torch._foreach_zero_(tensors)
        self.known_length = 0

    @property
    def _is_user_defined(self) -> bool:
        return False

    @_is_user_defined.setter
    def _is_user_defined(self, value) -> None:
        pass


def bucket_len(needed: int, min_len: int, max_len: int) -> int:
    """Smallest power of two >= needed (and >= min_len), capped at max_len."""
    size = max(min_len, 1 << max(0, needed - 1).bit_length())
    return min(size, max_len)


class StaticCachePool:
    """Hands out EngineCache objects per (batch, capacity bucket), reset for reuse."""

    def __init__(self, config, *, min_len: int = 256, max_len: int | None = None, max_slots: int = 4):
        self.config = config
        self.min_len = min_len
        self.max_len = max_len or getattr(config, "max_position_embeddings", None) or 4096
        self.max_slots = max_slots
        self._caches: OrderedDict[tuple[int, int], object] = OrderedDict()

    def get(self, batch: int, needed: int):
        """A reset StaticCache holding at least `needed` positions for `batch` sequences.

        Raises ValueError naming the limit when `needed` exceeds the model's maximum length.
        """
        if needed > self.max_len:
            raise ValueError(
                f"prompt + max_new_tokens = {needed} tokens exceeds the maximum static cache length {self.max_len} "
                "(the model's max_position_embeddings, or patch_model(..., max_cache_len=...))"
            )
        key = (batch, bucket_len(needed, self.min_len, self.max_len))
        cache = self._caches.pop(key, None)
        if cache is None:
            cache = EngineCache(config=self.config, max_cache_len=key[1])
            while len(self._caches) >= self.max_slots:
                self._caches.popitem(last=False)
        else:
            cache.reset()
        self._caches[key] = cache
        return cache

    def clear(self) -> None:
        self._caches.clear()
