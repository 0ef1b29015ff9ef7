"""``PackedLayerBase``: the cache-layer protocol shared by ``PQLayer`` (token layout) and ``GroupedPQLayer``.

A subclass keeps ``self.length`` (tokens held) and implements ``_clear()`` and ``_apply(fn)`` (``fn`` applied to
every tensor it holds: device moves and batch reordering).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

from .handles import PackedKV


class PackedLayerBase(CacheLayerMixin):
    def update_result(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """What ``update`` returns: ``PackedKV`` handles ``[B, H, T, D]`` for the ``slimkit_pq`` attention
        (which reads the planes itself), otherwise the dequantized keys and values."""
        if not self.return_handles:
            return self.dequantized_keys(), self.dequantized_values()
        b, h = key_states.shape[:2]
        return (PackedKV(self, "keys", (b, h, self.length, self.head_dim), key_states.dtype, key_states.device),
                PackedKV(self, "values", (b, h, self.length, self.value_dim), value_states.dtype,
                         value_states.device))

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        if isinstance(query_length, torch.Tensor):  # transformers < 5.24 passes cache_position
            query_length = query_length.shape[0]
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def get_max_cache_shape(self) -> int:  # transformers < 5.24 name of get_max_length
        return -1

    def reset(self) -> None:
        self._clear()
        self.is_initialized = False

    def offload(self):
        self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self):
        if self.is_initialized:
            self._apply(lambda t: t.to(self.device, non_blocking=True))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices, ...])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))
