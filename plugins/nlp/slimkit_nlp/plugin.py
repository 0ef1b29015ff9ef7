"""Entry point of the built-in ``nlp`` plugin (loaded like any third-party plugin).

Each technique lives in its own package; list its registration module in ``PARTS``.
"""
from slimkit.hookspecs import hookimpl
from slimkit.parts import delegate_hooks

PARTS = (
    "slimkit_nlp.cli",
    "slimkit_nlp.lsra.registration",
    "slimkit_nlp.pq.registration",
    "slimkit_nlp.spatten.registration",
    "slimkit_nlp.hat.registration",
)

delegate_hooks(globals(), PARTS)


@hookimpl
def register_converters(register) -> None:
    """Checkpoint converters: HAT and Lite Transformer fairseq checkpoints, HAT's latency predictors."""
    from .convert.hat_registration import register_converters as register_hat
    from .convert.lite_registration import register_converters as register_lite

    register_hat(register)
    register_lite(register)
