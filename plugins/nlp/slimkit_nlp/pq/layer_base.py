"""``PackedLayerBase``: the cache-layer protocol shared by ``PQLayer`` (token layout) and ``GroupedPQLayer``.

A subclass keeps ``self.length`` (tokens held) and implements ``_clear()``.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin


class PackedLayerBase(CacheLayerMixin):
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
