"""Online (streaming) inference: one frame per call with stream buffers.

``to_online(model)`` converts a causal TSM model (``direction="past"``) and/or a network of
:class:`CausalConv3d` layers into an :class:`OnlineStream`; ``export_onnx(stream, path)`` writes
its functional form with the buffers as explicit inputs and outputs.
"""
from .cells import CausalConv3d, CausalConvCell, ShiftCell, StreamCell
from .convert import OnlineStream, to_online


def export_onnx(*args, **kwargs):
    """See :func:`slimkit_video.online.export.export_onnx` (needs the ``export`` extra)."""
    from .export import export_onnx as _export

    return _export(*args, **kwargs)


__all__ = ["to_online", "OnlineStream", "CausalConv3d", "CausalConvCell", "ShiftCell", "StreamCell",
           "export_onnx"]
