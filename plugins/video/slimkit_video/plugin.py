"""Entry point of the built-in ``video`` plugin (loaded like any third-party plugin).

Each technique lives in its own package; list its registration module in ``PARTS``.
"""
from slimkit.hookspecs import hookimpl
from slimkit.parts import delegate_hooks

PARTS = (
    "slimkit_video.cli",
    "slimkit_video.tsm.registration",
    "slimkit_video.r2plus1d.registration",
    "slimkit_video.online.registration",
    "slimkit_video.benchmarks",
)

delegate_hooks(globals(), PARTS)


@hookimpl
def register_converters(register) -> None:
    """Checkpoint converters: torchvision's video ResNets and the TSM repository's checkpoints."""
    from .convert.registration import register_converters as register_video_converters

    register_video_converters(register)
