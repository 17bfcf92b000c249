"""Data section of the config (``data.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config.base import ConfigError, doc


@dataclass
class DataConfig:
    source: str = doc("'stdlib' (the embedded corpus: this Python's standard library sources), "
                      "a local file/glob/directory (text, json, jsonl, parquet) or a Hub dataset id", "stdlib")
    format: str | None = doc("loader for local files: text, json or parquet (default: from the extension)", None)
    text_field: str = doc("column holding the text", "text")
    text_unit: str = doc("for text files: one document per 'document' (file), 'paragraph' or 'line'", "document")
    split: str = doc("split of a Hub dataset", "train")
    tokenizer: str = doc("'bpe' (byte-level BPE trained once on the corpus and cached), 'bytes', "
                         "or a local tokenizer directory/tokenizer.json", "bpe")
    vocab_size: int = doc("vocabulary size when training the 'bpe' tokenizer", 4096)
    curriculum: str = doc("sequence-length schedule 'LEN:UNTIL_TOKENS,...,LEN:inf' (e.g. 128:2M,256:inf)", "256:inf")
    val_source: str | None = doc("a separate validation source, same syntax as data.source (read with data.format, "
                                 "text_field, text_unit, split); when set, data.source holds nothing out and "
                                 "data.val_every is not used", None)
    val_every: int = doc("hold out one document in N of data.source for validation (chosen by a hash of its "
                         "text; training never sees them); 0 disables validation. Not used with data.val_source",
                         20)
    val_docs: int = doc("at most this many held-out (or data.val_source) documents make up the validation set; "
                        "0 disables validation", 64)
    shuffle_buffer: int = doc("documents in the shuffle buffers, split over data.partitions; > 0 also shuffles "
                              "shard order per epoch (0: source order)", 256)
    partitions: int = doc("data partitions, each with its own stream and state; every step takes its rows from "
                          "them in a fixed order, so the batches do not depend on the number of processes, which "
                          "must divide it (a run resumes at any such number)", 64)
    epochs: int = doc("passes over the data before the loader stops (0: repeat forever)", 0)
    seed: int = doc("seed for shard order and the shuffle buffer", 0)
    prefetch: bool = doc("prepare the next step's batches on a background thread while the current step "
                         "trains (trainer/data/prefetch.py); resume stays exact", True)

    def validate(self) -> None:
        if self.partitions < 1:
            raise ConfigError(f"data.partitions must be >= 1 (e.g. 64), got {self.partitions}")
        for key in ("val_docs", "val_every", "shuffle_buffer", "epochs", "seed"):
            if getattr(self, key) < 0:
                raise ConfigError(f"data.{key} must be >= 0, got {getattr(self, key)}")
        if self.val_source is not None and not self.val_source.strip():
            raise ConfigError("data.val_source must not be empty; give a file/glob/directory, 'stdlib' or a Hub "
                              "dataset id, or null to hold out data.val_every documents of data.source")
        if self.val_every == 1 and not self.val_source:
            raise ConfigError("data.val_every 1 holds out every document, leaving no training data; "
                              "use 0 (no validation) or N >= 2 (one document in N)")
        if not self.source or not self.text_field or not self.tokenizer:
            raise ConfigError("data.source, data.text_field and data.tokenizer must not be empty")
        if self.format not in (None, "text", "json", "parquet"):
            raise ConfigError(f"data.format must be text, json or parquet, got {self.format!r}")
        if self.text_unit not in ("document", "paragraph", "line"):
            raise ConfigError(f"data.text_unit must be document, paragraph or line, got {self.text_unit!r}")
        if self.tokenizer == "bpe" and not 300 <= self.vocab_size <= 1_000_000:
            raise ConfigError(f"data.vocab_size must be in [300, 1000000] for the bpe tokenizer, got {self.vocab_size}")
        from trainer.config.curriculum import parse_curriculum

        parse_curriculum(self.curriculum)  # syntax and order; sizes are checked against the run by validate_curriculum
