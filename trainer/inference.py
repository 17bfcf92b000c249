"""``scaleout generate`` and ``scaleout eval``: use an export (or a checkpoint) with plain transformers.

    scaleout generate runs/tiny/export --prompt "def main():" --max-new-tokens 40
    scaleout eval runs/tiny/export --data.source ./val.jsonl --batches 8 --seq-len 256 --json

A checkpoint or run directory is exported to a temporary folder first (``trainer/export.py``), so
both commands always run the model exactly as ``AutoModelForCausalLM.from_pretrained`` loads it.
``eval`` reads and tokenizes the source with the trainer's data code (``trainer/data``) and the
model's own tokenizer: documents in source order joined with EOS, cut into rows of ``--seq-len``,
the mean next-token loss over ``--batches`` x ``--batch-size`` rows (every row the same length, so
it is the mean over tokens), perplexity = exp(loss).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile

import torch

from trainer.configlib import ConfigError
from trainer.exit_codes import EXIT_USAGE
from trainer.export import quiet_libraries

EVAL_DATA_KEYS = ("source", "format", "text_field", "text_unit", "split", "val_every")


@contextlib.contextmanager
def model_folder(path: str, weights: str = "auto"):
    """``path`` if it is an export, else a temporary export of the checkpoint or run directory."""
    from trainer.export import export_checkpoint, is_export

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
    losses = [model(input_ids=b, labels=b).loss.double() for b in rows.split(batch_size)]
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


# -- command lines --------------------------------------------------------------------------------------
def _parser(prog: str, description: str):
    from trainer.cli import OneLineParser

    p = OneLineParser(prog=prog, allow_abbrev=False, description=description)
    p.add_argument("model", metavar="EXPORT_OR_CHECKPOINT",
                   help="an exported folder, a checkpoint (runs/NAME/checkpoints/step_N) or a run directory")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="for a checkpoint: which weights to export first (auto: the EMA when there is one)")
    return p


def _fail(prog: str, e: Exception) -> int:
    sys.stderr.write(f"{prog}: error: {' '.join(str(e).split())}\n")
    return EXIT_USAGE


def main_generate(argv: list[str]) -> int:
    prog = "scaleout generate"
    p = _parser(prog, "Continue a prompt with an exported model (transformers generate).")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    ns = p.parse_args(argv)
    quiet_libraries()
    if ns.max_new_tokens < 1 or not ns.temperature >= 0 or not ns.prompt:
        p.error("--max-new-tokens must be >= 1, --temperature >= 0 and --prompt not empty")
    try:
        with model_folder(ns.model, ns.weights) as folder:
            print(generate(folder, ns.prompt, ns.max_new_tokens, ns.temperature, ns.seed))
    except (ConfigError, FileNotFoundError) as e:
        return _fail(prog, e)
    return 0


def main_eval(argv: list[str]) -> int:
    from trainer.configlib import from_dict, iter_fields, parse_scalar
    from trainer.data.config import DataConfig
    from trainer.data.sources import Source

    prog = "scaleout eval"
    p = _parser(prog, "Loss and perplexity of a model on a data source.")
    helps = {key: text for key, _, _, text in iter_fields(DataConfig)}
    helps["val_every"] = ("only the documents a training run with this data.val_every held out "
                          "(0, the default: every document)")
    for key in EVAL_DATA_KEYS:
        p.add_argument(f"--data.{key}", dest=f"data_{key}", metavar="VALUE", required=key == "source",
                       help=helps[key])
    p.add_argument("--batches", type=int, default=8, help="batches to evaluate")
    p.add_argument("--batch-size", type=int, default=4, help="rows per batch")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: the model's max positions)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    ns = p.parse_args(argv)
    quiet_libraries()
    if ns.batches < 1 or ns.batch_size < 1:
        p.error("--batches and --batch-size must be >= 1")
    tree = {"val_every": 0}
    for key in EVAL_DATA_KEYS:
        value = getattr(ns, f"data_{key}")
        if value is not None:
            tree[key] = value if key == "source" else parse_scalar(value, f"data.{key}")
    try:
        data_cfg = from_dict(DataConfig, tree, "data")
        Source.from_config(data_cfg)  # a missing path fails before a model is loaded
        with model_folder(ns.model, ns.weights) as folder:
            result = evaluate_folder(folder, data_cfg, ns.batches, ns.batch_size, ns.seq_len)
    except (ConfigError, FileNotFoundError) as e:
        return _fail(prog, e)
    if ns.json:
        print(json.dumps(result))
    else:
        print(f"loss {result['loss']:.4f} perplexity {result['perplexity']:.2f} ({result['tokens']} tokens: "
              f"{result['rows']} rows of {result['seq_len']} from {result['source']})")
    return 0
