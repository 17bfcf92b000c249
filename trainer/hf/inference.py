"""``scaleout generate`` and ``scaleout eval``: use an export (or a checkpoint) with plain transformers.

    scaleout generate runs/tiny/export --prompt "def main():" --max-new-tokens 40
    scaleout eval runs/tiny/export --data.source ./val.jsonl --batches 8 --seq-len 256 --json

A checkpoint or run directory is exported to a temporary folder first (``trainer/hf/export.py``), so
both commands always run the model exactly as ``AutoModelForCausalLM.from_pretrained`` loads it.
``eval`` reads and tokenizes the source with the trainer's data code (``trainer/data``) and the
model's own tokenizer: documents in source order joined with EOS, cut into rows of ``--seq-len``,
the mean next-token loss over ``--batches`` x ``--batch-size`` rows (every row the same length, so
it is the mean over tokens), perplexity = exp(loss).
"""

from __future__ import annotations

import contextlib
import math
import tempfile

import torch

from models.moe import aux_loss_coef, lm_loss
from trainer.config.base import ConfigError

EVAL_DATA_KEYS = ("source", "format", "text_field", "text_unit", "split", "val_every")


@contextlib.contextmanager
def model_folder(path: str, weights: str = "auto"):
    """``path`` if it is an export, else a temporary export of the checkpoint or run directory."""
    from trainer.hf.export import export_checkpoint, is_export

    if is_export(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="scaleout-export-") as tmp:
        export_checkpoint(path, f"{tmp}/model", weights)
        yield f"{tmp}/model"


def load(folder: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def generate(folder: str, prompt: str, max_new_tokens: int = 50, temperature: float = 0.8, seed: int = 0) -> str:
    """The prompt and its continuation (sampled at ``temperature``; 0: greedy)."""
    model, tok = load(folder)
    ids = tok(prompt, return_tensors="pt")
    torch.manual_seed(seed)
    sample = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    out = model.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **sample)
    return tok.decode(out[0], skip_special_tokens=True)


def eval_rows(data_cfg, tok, seq_len: int, n_rows: int) -> torch.Tensor:
    """Up to ``n_rows`` rows of ``seq_len`` tokens: the source's documents in order (only those training
    held out when ``data.val_every`` > 0), tokenized and joined with EOS as the trainer does."""
    import numpy as np

    from trainer.data.loader import TOKENIZE_BATCH, tokenize
    from trainer.data.packing import cut_blocks, join_documents
    from trainer.data.sources import Source, iter_documents

    stream, texts = np.empty(0, dtype=np.int64), []
    docs = iter_documents(Source.from_config(data_cfg), heldout=data_cfg.val_every > 0)
    for text in docs:
        texts.append(text)
        if len(texts) == TOKENIZE_BATCH:
            stream = np.concatenate([stream, join_documents(tokenize(tok, texts), tok.eos_token_id)])
            texts = []
            if len(stream) >= n_rows * seq_len:
                break
    if texts:
        stream = np.concatenate([stream, join_documents(tokenize(tok, texts), tok.eos_token_id)])
    rows = min(n_rows, len(stream) // seq_len)
    if rows == 0:
        raise ConfigError(f"data.source '{data_cfg.source}' gives {len(stream)} tokens, less than one row of "
                          f"--seq-len {seq_len}; lower --seq-len or give more data")
    return cut_blocks(stream, rows, seq_len)[0]


@torch.no_grad()
def mean_loss(model, rows: torch.Tensor, batch_size: int) -> float:
    """Mean of the per-batch next-token losses (equal-length rows: the mean over tokens when the
    batches are equal too)."""
    coef = aux_loss_coef(model.config)  # a MoE class's balancing loss is not part of the LM loss
    losses = [lm_loss(model(input_ids=b, labels=b), coef).double() for b in rows.split(batch_size)]
    sizes = torch.tensor([len(b) for b in rows.split(batch_size)], dtype=torch.float64)
    return float((torch.stack(losses) * sizes).sum() / sizes.sum())


def evaluate_folder(folder: str, data_cfg, batches: int, batch_size: int, seq_len: int | None) -> dict:
    model, tok = load(folder)
    max_len = model.config.max_position_embeddings
    seq_len = seq_len or max_len
    if not 2 <= seq_len <= max_len:
        raise ConfigError(f"--seq-len must be in [2, {max_len}] (the model's max positions), got {seq_len}")
    rows = eval_rows(data_cfg, tok, seq_len, batches * batch_size)
    loss = mean_loss(model, rows, batch_size)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "rows": len(rows), "seq_len": seq_len,
            "tokens": rows.numel(), "batches": math.ceil(len(rows) / batch_size), "source": data_cfg.source}
