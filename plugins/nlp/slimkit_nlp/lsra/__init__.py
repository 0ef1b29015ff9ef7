"""Lite Transformer: Long-Short Range Attention (LSRA) blocks and Hugging Face models."""
