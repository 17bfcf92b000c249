"""``scaleout generate`` and ``scaleout eval``: use an exported model (or a checkpoint, exported first)."""

from __future__ import annotations

import json
import sys

from trainer.config.args import OneLineParser
from trainer.config.base import ConfigError, from_dict, iter_fields, parse_scalar
from trainer.config.data import DataConfig
from trainer.data.sources import Source
from trainer.hf.export import quiet_libraries
from trainer.hf.inference import EVAL_DATA_KEYS, evaluate_folder, generate, model_folder
from trainer.launch.exit_codes import EXIT_USAGE


def _parser(prog: str, description: str):
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
