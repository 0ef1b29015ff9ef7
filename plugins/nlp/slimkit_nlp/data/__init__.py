"""Built-in text corpora and the byte-level tokenizer used by slimkit's small language models."""
from .botchan import botchan_path, load_botchan
from .shakespeare import corpus_dir, load_plays, load_text
from .tokenizer import ByteTokenizer

__all__ = ["corpus_dir", "load_plays", "load_text", "ByteTokenizer", "botchan_path", "load_botchan"]
