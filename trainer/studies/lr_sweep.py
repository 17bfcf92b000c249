"""LR-transfer sweep: does the best learning rate at the base width stay best at wider widths?

Trains every (parametrization, optimizer, width, lr) on the embedded corpus (the stdlib sources
through ``trainer.data``: byte tokenizer, held-out validation documents) with the run's own
optimizer (``trainer.optim.build_optimizer``: ShardedMuon in whole-param mode, or AdamW), the
loop's schedule (``trainer.optim.schedule.lr_factor``) and gradient clipping, then reports validation
loss. Under muP the argmin lr should stay put across widths (TP V fig. 1); under SP it moves.
Every run sees the same batches; runs are spread over ``--procs`` single-threaded processes.

    scaleout lr-sweep --widths 64,128,256 --steps 300                  # -> runs/lr_sweep/
    scaleout lr-sweep --out docs/mup/lr_sweep     # regenerate the committed results on purpose
    scaleout lr-sweep --model-type granitemoe --out docs/mup/lr_sweep_granitemoe   # experts + routers

writes ``<out>.csv`` (one row per run), ``<out>.md`` (best lr per width) and ``<out>.png``.
For ``--optim muon`` the sweep varies one lr used for Muon (scale 'match_rms_adamw', whose
update RMS matches AdamW's, Moonlight) and for the AdamW-handled embeddings, readout and gains.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time

import torch

from trainer.studies.coord_check import coord_model, coord_optimizer

DEFAULT_LRS = "0.0005,0.001,0.002,0.004,0.008,0.016,0.032,0.064"


def sweep_data(*, steps: int, batch: int, seq_len: int, val_batches: int, seed: int = 0):
    """``steps`` training batches (one tensor [steps, batch, seq_len]) and the validation batches,
    from the embedded corpus with the byte tokenizer (vocab 258: cheap readout on CPU). Documents are
    paragraphs, so a short run sees many files rather than a few long ones (pydoc_data/topics.py alone
    is 0.8 MB), and validation (held-out paragraphs) matches the training distribution."""
    from trainer.config.data import DataConfig
    from trainer.data import TrainLoader, build_tokenizer, build_val_batches

    cfg = DataConfig(source="stdlib", tokenizer="bytes", text_unit="paragraph", curriculum=f"{seq_len}:inf",
                     val_docs=1024, shuffle_buffer=4096, seed=seed)
    tok = build_tokenizer(cfg)
    loader = TrainLoader(cfg, tok, tokens_per_step=batch * seq_len, max_seq_len=seq_len)
    train = torch.stack([loader.next_step()[0]["input_ids"] for _ in range(steps)])
    val = [b["input_ids"] for b in build_val_batches(cfg, tok, seq_len=seq_len, micro_batch_size=batch,
                                                     n_batches=val_batches)]
    return train, val, len(tok)


def lr_schedule(step: int, total: int, warmup: int) -> float:
    from trainer.optim.schedule import lr_factor

    return lr_factor(step, total=total, warmup=warmup, kind="cosine", min_ratio=0.1)


def train_one(job: dict, train: torch.Tensor, val: list[torch.Tensor], vocab: int) -> dict:
    """One run; returns the job with final train loss (mean of the last 20 steps) and val loss.
    A run whose loss turns non-finite or exceeds its first loss by 1.5x is marked diverged."""
    torch.manual_seed(job["seed"])
    model, mup = coord_model(job["width"], job["parametrization"], base_width=job["base_width"],
                             n_layers=job["n_layers"], vocab=vocab, seed=job["seed"], mup_options=job.get("mup"),
                             model_type=job.get("model_type", "granite"))
    opt = coord_optimizer(model, mup, job["optim"], job["lr"], job["lr"], "match_rms_adamw")
    steps = len(train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_schedule(s, steps, job["warmup"]))
    losses, t0, diverged = [], time.time(), False
    for ids in train:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), job["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > 1.5 * losses[0]:
            diverged = True
            break
    val_loss = float("nan")
    if not diverged:
        model.eval()
        with torch.no_grad():
            val_loss = sum(model(input_ids=v, labels=v).loss.item() for v in val) / len(val)
    tail = losses[-20:]
    return dict(job, train_loss=sum(tail) / len(tail), val_loss=val_loss, diverged=diverged,
                seconds=round(time.time() - t0, 1))


_DATA = None


def _init_worker(data) -> None:
    global _DATA
    torch.set_num_threads(1)
    _DATA = data


def _run(job: dict) -> dict:
    return train_one(job, *_DATA)


def best_lrs(rows: list[dict]) -> dict:
    """(parametrization, optim, width) -> (best lr, its val loss), over runs that did not diverge."""
    best = {}
    for r in rows:
        if r["diverged"] or not math.isfinite(r["val_loss"]):
            continue
        key = (r["parametrization"], r["optim"], r["width"])
        if key not in best or r["val_loss"] < best[key][1]:
            best[key] = (r["lr"], r["val_loss"])
    return best


def markdown_table(rows: list[dict]) -> str:
    """Val loss per lr (columns) for every (optim, parametrization, width); the best is bold."""
    lrs = sorted({r["lr"] for r in rows})
    best = best_lrs(rows)
    lines = ["| optim | param | width | " + " | ".join(f"{lr:g}" for lr in lrs) + " | best lr |",
             "|---|---|---|" + "---|" * len(lrs) + "---|"]
    keys = sorted({(r["optim"], r["parametrization"], r["width"]) for r in rows},
                  key=lambda k: (k[0], k[1] != "mup", k[2]))
    for optim, param, width in keys:
        cells = []
        for lr in lrs:
            (r,) = [r for r in rows if (r["optim"], r["parametrization"], r["width"], r["lr"]) ==
                    (optim, param, width, lr)] or [None]
            if r is None:
                cells.append("")
            elif r["diverged"]:
                cells.append("div")
            else:
                text = f"{r['val_loss']:.3f}"
                cells.append(f"**{text}**" if best.get((param, optim, width), (None,))[0] == lr else text)
        b = best.get((param, optim, width))
        best_cell = f"{b[0]:g}" if b else "–"
        lines.append(f"| {optim} | {'μP' if param == 'mup' else 'SP'} | {width} | " + " | ".join(cells)
                     + f" | {best_cell} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Panels (optim x parametrization): val loss vs lr (log2), a line per width, minima marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optims = list(dict.fromkeys(r["optim"] for r in rows))
    params = [p for p in ("mup", "sp") if any(r["parametrization"] == p for r in rows)]
    widths = sorted({r["width"] for r in rows})
    fig, axes = plt.subplots(len(optims), len(params), figsize=(4.2 * len(params), 3.3 * len(optims)),
                             squeeze=False)
    cmap = plt.get_cmap("plasma")
    finite = [r["val_loss"] for r in rows if not r["diverged"] and math.isfinite(r["val_loss"])]
    top = min(max(finite), min(finite) + 1.5) if finite else 1
    for i, optim in enumerate(optims):
        for j, param in enumerate(params):
            ax = axes[i][j]
            for k, w in enumerate(widths):
                pts = sorted((r["lr"], r["val_loss"]) for r in rows if (r["optim"], r["parametrization"],
                             r["width"]) == (optim, param, w) and not r["diverged"])
                if not pts:
                    continue
                color = cmap(k / max(1, len(widths)))
                ax.plot(*zip(*pts), marker="o", ms=3, color=color, label=f"width {w}")
                lr, loss = min(pts, key=lambda p: p[1])
                ax.plot([lr], [loss], marker="*", ms=12, color=color)
            ax.set_xscale("log", base=2)
            ax.set_ylim(top=top)
            ax.set_title(f"{optim}, {'μP' if param == 'mup' else 'SP'}", fontsize=10)
            ax.set_xlabel("base lr")
            ax.set_ylabel("val loss")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from trainer.config.args import OneLineParser

    p = OneLineParser(prog="scaleout lr-sweep", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--lrs", default=DEFAULT_LRS, help="comma-separated base learning rates")
    p.add_argument("--optims", default="adamw,muon")
    p.add_argument("--params", default="mup,sp", help="parametrizations: mup, sp")
    p.add_argument("--base-width", type=int, default=None, help="muP base width (default: the smallest)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--procs", type=int, default=2, help="parallel single-threaded worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-type", default="granite",
                   choices=["granite", "granite_swa", "granitemoe", "granitemoe_swa"],
                   help="a model.type whose class carries the muP multipliers")
    p.add_argument("--out", default="runs/lr_sweep/lr_sweep",
                   help="output prefix for .csv, .md and .png (the committed results: docs/mup/lr_sweep)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    import multiprocessing

    args = parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    data = sweep_data(steps=args.steps, batch=args.batch, seq_len=args.seq_len, val_batches=args.val_batches,
                      seed=args.seed)
    jobs = [dict(parametrization=p, optim=o, width=w, lr=float(lr), base_width=args.base_width or min(widths),
                 n_layers=args.n_layers, warmup=args.warmup, grad_clip=args.grad_clip, seed=args.seed,
                 model_type=args.model_type)
            for o in args.optims.split(",") for p in args.params.split(",") for w in widths
            for lr in args.lrs.split(",")]
    jobs.sort(key=lambda j: -j["width"])  # longest first balances the pool
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    rows = []
    with multiprocessing.get_context("spawn").Pool(args.procs, _init_worker, (data,)) as pool:
        for row in pool.imap_unordered(_run, jobs):
            rows.append(row)
            print(f"[{len(rows)}/{len(jobs)}] {row['optim']} {row['parametrization']} w={row['width']} "
                  f"lr={row['lr']:g}: val {row['val_loss']:.4f} train {row['train_loss']:.4f}"
                  f"{' DIVERGED' if row['diverged'] else ''} ({row['seconds']}s)", flush=True)
            with open(args.out + ".csv", "w", newline="") as f:  # rewritten as runs finish: partial results survive
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(sorted(rows, key=lambda r: (r["optim"], r["parametrization"], r["width"], r["lr"])))
    table = markdown_table(rows)
    with open(args.out + ".md", "w") as f:
        f.write(table + "\n")
    plot(rows, args.out + ".png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
