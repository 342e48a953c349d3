"""Count the bytes a traced step keeps alive: every tensor storage an op creates, from birth to release.

    with PeakTracker(ignore=model_tensors) as tracker, fused_attention():
        loss = step()          # on the meta device: shapes and dtypes, no data
        forward_bytes = tracker.current
        loss.backward()
    tracker.peak               # the most bytes alive at once (what an allocator's high-water mark sees)

A `TorchDispatchMode` sees each ATen op's outputs; a storage is counted once however many views share it
(keyed by its StorageImpl), and a `weakref.finalize` on it subtracts its bytes when autograd or Python lets it
go, so the peak includes transients (an op's output freed a line later) as well as what backward saves.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTracker(TorchDispatchMode):
    """Live and peak bytes of the storages created while active (storages in `ignore` are not counted)."""

    def __init__(self, ignore: Iterable[torch.Tensor] = ()):
        super().__init__()
        self._ignored = {t.untyped_storage()._cdata for t in ignore}
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._count(value)
        return out

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._ignored or key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)


def module_tensors(*modules: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers: already resident before a step, counted as weights instead."""
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


_SDPA = F.scaled_dot_product_attention
_lock = threading.Lock()
_users = 0


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    if query.device.type != "meta":  # another thread's real attention (a UI preview) runs as it always does
        return _SDPA(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kwargs)
    # The memory-efficient kernel keeps the output and a log-sum-exp per row, not the L x L matrix.
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale)[0]


@contextlib.contextmanager
def fused_attention():
    """Trace attention as a GPU runs it (flash / memory-efficient SDPA, as CPU's flash kernel does too).

    On the meta device `scaled_dot_product_attention` falls back to its math form, which materialises
    (and saves for backward) the whole attention matrix: gigabytes no real training step allocates.
    """
    global _users
    with _lock:  # two estimates at once (UI threads) share the patch; the last one out removes it
        _users += 1
        F.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                F.scaled_dot_product_attention = _SDPA
