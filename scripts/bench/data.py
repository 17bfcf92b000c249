"""Data-loader throughput vs the training loop's consumption, per process, on the tiny and 125m presets.

For each preset's recipe (configs/<preset>.yaml: corpus, tokenizer, tokens per step, grad
accumulation) this measures, on one process (rank 0 of the recipe's world size):

1. the loader: ``TrainLoader.next_step()`` tokens/s (streaming + shuffle buffer + batched
   tokenization + packing), its start-up time (tokenizer load, first step) and the
   streaming stage alone (documents/s, MB/s);
2. training: forward + backward + AdamW step of the preset's Granite model at the same
   per-process tokens per step (fewer rows for 125m on CPU, where one full step would take
   minutes), tokens/s.

The loader must out-run training by a wide margin (>= 10x for tiny on CPU).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/data.py --presets tiny,125m
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from models import build_model, granite_config, resolve_preset
from trainer.config import load_config
from trainer.config.curriculum import parse_curriculum
from trainer.data import TrainLoader, build_tokenizer
from trainer.data.loader import DocStream
from trainer.data.sources import Source

WORLD = {"tiny": 2, "125m": 8}  # the recipes' intended process counts (README: 2 CPU ranks; 8 GPUs)


def bench_loader(cfg, world: int, seconds: float) -> dict:
    t0 = time.perf_counter()
    tok = build_tokenizer(cfg.data)
    t_tok = time.perf_counter() - t0
    loader = TrainLoader(cfg.data, tok, rank=0, world_size=world, tokens_per_step=cfg.train.tokens_per_step,
                         grad_accum=cfg.train.grad_accum)
    loader.next_step()
    t_first = time.perf_counter() - t0 - t_tok
    steps, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds:
        loader.next_step()
        steps += 1
    dt = time.perf_counter() - t1
    per_rank = cfg.train.tokens_per_step // world
    docs, n, chars, t2 = DocStream(Source.from_config(cfg.data), 0, world), 0, 0, time.perf_counter()
    while time.perf_counter() - t2 < seconds / 2 and (d := docs.next_doc()) is not None:
        n, chars = n + 1, chars + len(d)
    ds = time.perf_counter() - t2
    return {"tokenizer_s": round(t_tok, 2), "first_step_s": round(t_first, 2), "steps": steps,
            "tokens_per_step_per_rank": per_rank, "loader_tokens_per_s": round(steps * per_rank / dt),
            "stream_docs_per_s": round(n / ds), "stream_MB_per_s": round(chars / ds / 1e6, 1), "vocab": len(tok)}


def bench_train(preset: str, vocab: int, seq_len: int, rows: int, steps: int) -> dict:
    model = build_model(granite_config(resolve_preset(preset), vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (rows, seq_len))

    def step():
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, optimizer state)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    return {"rows": rows, "seq_len": seq_len, "step_s": round(dt, 3), "train_tokens_per_s": round(rows * seq_len / dt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--presets", default="tiny,125m")
    ap.add_argument("--seconds", type=float, default=5.0, help="time spent on each loader measurement")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    results = {"threads": torch.get_num_threads()}
    for preset in args.presets.split(","):
        cfg = load_config(f"configs/{preset}.yaml", ["--train.steps", "1"])
        world = WORLD[preset]
        res = bench_loader(cfg, world, args.seconds)
        seq = parse_curriculum(cfg.data.curriculum)[-1].seq_len  # the final (largest) phase
        per_rank = cfg.train.tokens_per_step // world // cfg.train.grad_accum
        rows = max(1, per_rank // seq) if preset == "tiny" else 1  # 125m: one row per step on CPU
        res.update(bench_train(preset, res["vocab"], seq, rows, steps=5 if preset == "tiny" else 2))
        res["loader_over_training"] = round(res["loader_tokens_per_s"] / res["train_tokens_per_s"], 1)
        results[preset] = res
        print(preset, json.dumps(res), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
