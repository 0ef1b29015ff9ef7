"""Entry point of the built-in ``video`` plugin (loaded like any third-party plugin).

Each technique lives in its own package; list its registration module in ``PARTS``.
"""
from slimkit.parts import delegate_hooks

PARTS = (
    "slimkit_video.cli",
    "slimkit_video.tsm.registration",
    "slimkit_video.r2plus1d.registration",
    "slimkit_video.online.registration",
    "slimkit_video.benchmarks",
)

delegate_hooks(globals(), PARTS)
