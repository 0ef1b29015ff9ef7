"""Frame sources for streaming inference: ``webcam:N``, video files/folders, ``synthetic``, ``lavfi:SPEC``.

Open one with ``slimkit.open_source(spec)``; list them with ``slimkit.sources()``.
"""
from .base import FrameSource
from .openers import (
                      FileSource,
                      LavfiSource,
                      SyntheticSource,
                      WebcamSource,
                      camera_devices,
                      has_camera,
                      register_sources,
)

__all__ = ["FrameSource", "FileSource", "LavfiSource", "SyntheticSource", "WebcamSource", "camera_devices",
           "has_camera", "register_sources"]
