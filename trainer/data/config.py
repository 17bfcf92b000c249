"""Data section of the config (``data.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.configlib import ConfigError, doc


@dataclass
class DataConfig:
    source: str = doc("'stdlib' (the embedded corpus: this Python's standard library sources), "
                      "a local file/glob/directory (text, json, jsonl, parquet) or a Hub dataset id", "stdlib")
    format: str | None = doc("loader for local files: text, json or parquet (default: from the extension)", None)
    text_field: str = doc("column holding the text", "text")
    split: str = doc("split of a Hub dataset", "train")
    tokenizer: str = doc("'bpe' (byte-level BPE trained once on the corpus and cached), 'bytes', "
                         "or a local tokenizer directory/tokenizer.json", "bpe")
    vocab_size: int = doc("vocabulary size when training the 'bpe' tokenizer", 4096)
    curriculum: str = doc("sequence-length schedule 'LEN:UNTIL_TOKENS,...,LEN:inf' (e.g. 128:2M,256:inf)", "256:inf")
    val_docs: int = doc("documents held out (from the start of the source) for validation", 64)
    shuffle_buffer: int = doc("documents in the streaming shuffle buffer (0: no shuffle)", 256)
    seed: int = doc("seed for shard order and the shuffle buffer", 0)

    def validate(self) -> None:
        if self.val_docs < 0:
            raise ConfigError(f"data.val_docs must be >= 0, got {self.val_docs}")
        if self.format not in (None, "text", "json", "parquet"):
            raise ConfigError(f"data.format must be text, json or parquet, got {self.format!r}")
