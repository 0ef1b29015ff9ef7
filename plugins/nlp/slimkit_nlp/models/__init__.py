"""Real pretrained language models that ship in PyPI packages (no model hub needed)."""
from .smollm2 import fetch_smollm2, gguf_path, load_smollm2, smollm2_dir

__all__ = ["fetch_smollm2", "gguf_path", "load_smollm2", "smollm2_dir"]
