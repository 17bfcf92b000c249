"""Each ``model.type`` at the tiny preset on this CPU (issue 18): total and active parameters, tokens/s
of a training step, and the Muon step's overhead over AdamW; and, for the MoE classes, whether Muon
should orthogonalize gate and up apart (the default) or fused.

    .venv/bin/python scripts/bench/architectures.py [--steps 8] [--write BENCHMARKS.md]
    .venv/bin/python scripts/bench/architectures.py --gate-up [--train-steps 150]

One process, one thread (OMP_NUM_THREADS=1), fp32, 2 x 256 tokens per step of random ids
(vocabulary 4096), the tiny preset of every type (muP off, so the AdamW baseline is the same model).
A step = forward + backward + optimizer step; its time is the median over ``--steps`` after 2 warm-up
steps, for ShardedMuon (Muon hidden + AdamW rest, fp32 Newton-Schulz) and for torch's AdamW over the
same groups; the Muon overhead is the difference.

``--gate-up``: granitemoe tiny on the embedded corpus (``train()``, 1 process, 2 seeds), the gate and
up halves of every expert's fused ``gate_up_proj`` orthogonalized as two matrices (``halves``) or as
one (2F, d) matrix (``fused``): validation loss at the end of each run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from markers import write_between  # noqa: E402

from models import TYPES, active_params, build_model, count_params, model_config, resolve_moe, resolve_preset  # noqa: E402
from trainer.config import Config  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402

VOCAB, BATCH, SEQ = 4096, 2, 256


def step_time(model, opt, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 2):
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
        t = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(model_type: str, steps: int) -> dict:
    arch = resolve_preset("tiny")
    config = model_config(model_type, arch, VOCAB, moe=resolve_moe(model_type, arch))
    row = {"type": model_type}
    for name in ("adamw", "muon"):
        cfg = Config()
        cfg.mup.enabled, cfg.optim.name, cfg.optim.ns_dtype = False, name, "fp32"
        model = build_model(config, seed=0)
        row["total"], row["active"] = count_params(model), active_params(model)
        row[name] = step_time(model, build_optimizer(model, cfg), steps)
    row["tokens_s"] = BATCH * SEQ / row["muon"]
    return row


def table(rows: list[dict]) -> str:
    out = ["| model.type | parameters | active per token | tokens/s (Muon) | step, Muon | step, AdamW | "
           "Muon overhead |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| `{r['type']}` | {r['total'] / 1e6:.2f}M | {r['active'] / 1e6:.2f}M | {r['tokens_s']:,.0f} | "
                   f"{r['muon'] * 1e3:.0f} ms | {r['adamw'] * 1e3:.0f} ms | "
                   f"{(r['muon'] - r['adamw']) * 1e3:+.0f} ms ({r['muon'] / r['adamw']:.2f}x) |")
    return "\n".join(out)


def gate_up(train_steps: int) -> None:
    import tempfile

    from trainer.config import load_config
    from trainer.optim import matrices
    from trainer.run.loop import train

    results = {}
    for mode in ("halves", "fused"):
        for seed in (0, 1):
            rule = {"gate_up_proj": "halves" if mode == "halves" else "stack", "down_proj": "stack"}
            matrices.EXPERT_STACKS["GraniteMoeExperts"] = rule
            with tempfile.TemporaryDirectory() as out:
                cfg = load_config("configs/tiny.yaml", [
                    "--model.type", "granitemoe", "--train.steps", str(train_steps), "--train.eval_every", "0",
                    "--dist.deepspeed_config", "null", "--log.trackers", "[]", "--log.progress", "false",
                    "--train.seed", str(seed), "--train.out_dir", out, "--checkpoint.every", "0",
                    "--train.tokens_per_step", "2048", "--data.curriculum", "128:inf"])
                results[mode, seed] = train(cfg)["val/loss"]
            print(f"{mode} seed {seed}: val/loss {results[mode, seed]:.4f}", flush=True)
    for mode in ("halves", "fused"):
        vals = [results[mode, s] for s in (0, 1)]
        print(f"{mode}: mean val/loss {statistics.mean(vals):.4f} (seeds {vals[0]:.4f}, {vals[1]:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--gate-up", action="store_true")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--write", help="replace the section between the bench markers in this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.gate_up:
        return gate_up(args.train_steps)
    rows = []
    for model_type in TYPES:
        rows.append(measure(model_type, args.steps))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.write:
        write_between(args.write, "architectures", text)


if __name__ == "__main__":
    main()
