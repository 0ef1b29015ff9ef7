"""slimkit video plugin: temporal shift (TSM), (2+1)D convolutions, online streaming inference.

Install with ``pip install 'slimkit[video]'``.
"""
