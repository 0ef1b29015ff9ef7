"""Checkpoint converters of the nlp plugin (``slimkit convert --list``): HAT and Lite Transformer fairseq
checkpoints and HAT's latency predictors. Each kind registers in its own ``*_registration`` module and
loads its converter module on first use; ``fairseq_pickle`` holds the fairseq classes both fairseq
kinds allow as data."""
