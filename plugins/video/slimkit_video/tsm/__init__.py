"""Temporal Shift Module (Lin, Gan, Han, ICCV 2019): ``temporal_shift``, ``TemporalShift``, ``TSMConfig``."""
from .config import TSMConfig
from .modules import TemporalPool, TemporalShift, temporal_pool
from .shift import reference_shift, temporal_shift
from .transform import apply_tsm

__all__ = ["TSMConfig", "TemporalShift", "TemporalPool", "temporal_pool", "temporal_shift",
           "reference_shift", "apply_tsm"]
