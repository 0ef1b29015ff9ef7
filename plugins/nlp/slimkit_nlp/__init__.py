"""slimkit NLP plugin: SpAtten pruning and progressive quantization, Lite Transformer (LSRA), HAT.

Install with ``pip install 'slimkit[nlp]'``.
"""
