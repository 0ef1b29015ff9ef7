"""Entry point of the built-in ``nlp`` plugin (loaded like any third-party plugin).

Each technique lives in its own package; list its registration module in ``PARTS``.
"""
from slimkit.parts import delegate_hooks

PARTS = (
    "slimkit_nlp.cli",
    "slimkit_nlp.lsra.registration",
    "slimkit_nlp.pq.registration",
    "slimkit_nlp.spatten.registration",
    "slimkit_nlp.hat.registration",
)

delegate_hooks(globals(), PARTS)
