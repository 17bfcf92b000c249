"""Tokens to target: does Muon + muP reach AdamW's loss in fewer tokens, on scaleout's own trainer?

    .venv/bin/python scripts/bench/convergence.py            # full: ~75 min on 2 cores
    .venv/bin/python scripts/bench/convergence.py --quick    # the same code paths, ~10 min

Every run is ``python -m trainer.cli train configs/tiny.yaml`` in one process (no DeepSpeed, one
thread; ``--procs`` runs side by side) on the site-packages corpus (``code_corpus.py``: ~73M
tokens, so no run repeats data; validation on held-out files), with the recipe's schedule (WSD,
30% decay) and the same token budget for every arm. Validation loss is read from the run's
``ranks/rank0.json``. Arms:

- ``adamw_sp``: AdamW in standard parametrization, the honest baseline: swept at each width;
- ``adamw_mup``: AdamW + muP; ``muon_mup``: Muon + muP (AdamW for embeddings, readout, gains at
  0.3x Muon's lr, the recipe's ratio); ``muon_mup_curriculum``: that plus a sequence-length
  curriculum (128 for the first 40% of tokens, then 256); ``muon_mup_gram_pe``: that with
  ``optim.ns_method gram_polar_express`` (issue 19's method with Polar Express's spectrum at the
  Gram form's cost), tuned on its own;

each swept at the small width (4 lrs a factor 2 apart; a best lr at the edge of the grid adds
points beyond it, up to 2), then run at the large width with the muP-transferred lr (the same base
lr), and with a second seed at both widths. Reported per width: the tokens each arm needs to
reach AdamW's final validation loss (seed by seed: AdamW of seed s sets the target for seed s) as
a fraction of the budget, with both seeds' values; final losses; wall-clock per token. The first
fraction reads the arm's full-budget curve; Muon + muP is also trained to 0.25, 0.5 and 0.75 of the
budget (each run with its own schedule), and the second fraction is where those final losses meet
the target.

Writes ``BENCHMARKS.md``'s ``convergence`` section (``--quick``: ``convergence-quick``), the plots
``docs/bench/convergence[_quick].png`` and ``..._lr.png``, and every run's numbers to
``runs/convergence/<mode>/results.json``; runs already in that file are not run again (delete
it to start over). ``--device cuda`` runs Muon + muP against tuned AdamW at 125m on one GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import code_corpus  # noqa: E402
from markers import write_between  # noqa: E402


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    optim: str  # adamw | muon
    mup: bool
    grid: tuple[float, ...]  # base lrs swept at the small width (AdamW's lr for adamw, Muon's for muon)
    curriculum: bool = False
    ns_method: str = "quintic"


ARMS = (
    Arm("adamw_sp", "AdamW (SP)", "adamw", False, (0.001, 0.002, 0.004, 0.008)),
    Arm("adamw_mup", "AdamW + μP", "adamw", True, (0.002, 0.004, 0.008, 0.016)),
    Arm("muon_mup", "Muon + μP", "muon", True, (0.005, 0.01, 0.02, 0.04)),
    Arm("muon_mup_curriculum", "Muon + μP + curriculum", "muon", True, (0.005, 0.01, 0.02, 0.04), curriculum=True),
    Arm("muon_mup_gram_pe", "Muon + μP, gram_polar_express", "muon", True, (0.005, 0.01, 0.02, 0.04),
        ns_method="gram_polar_express"),
)
BASELINE = "adamw_sp"
# Muon + muP is also trained on shorter budgets (its schedule fitted to each): the budget at which its final loss
# meets AdamW's is the figure the speedrun's "0.66x the tokens" means, which one curve's crossing understates
# (a WSD run reaches its low losses only in its decay).
SHORT_ARM, SHORT_FRACS = "muon_mup", (0.25, 0.5, 0.75)
MUON_ADAMW_RATIO = 0.3  # configs/tiny.yaml: adamw_lr 0.006 beside lr 0.02
MAX_EXTEND = 2

# model: the size presets (models/presets.py); the small one is muP's base width
MODES = {
    "full": dict(models=("tiny", "small"), steps=100, tokens_per_step=4096, seq_len=256, eval_every=10,
                 eval_batches=4, seeds=(0, 1), lr_points=4, procs=2),
    "quick": dict(models=("tiny", "small"), steps=16, tokens_per_step=2048, seq_len=256, eval_every=4,
                  eval_batches=2, seeds=(0, 1), lr_points=2, procs=2),
    # One GPU, within a session's device minutes (~1 min a run): AdamW (SP) swept at 125m, Muon + muP at the
    # base lr the full CPU sweep chose for tiny (muP base width 128), not swept: the transfer is the claim.
    "cuda": dict(models=("125m",), base="tiny", steps=200, tokens_per_step=32768, seq_len=1024, eval_every=20,
                 eval_batches=4, seeds=(0,), lr_points=4, procs=1, short=(), grids={"adamw_sp": (0.0005, 0.001, 0.002, 0.004)}),
}
CUDA_ARMS = ("adamw_sp", "muon_mup")


# ---- runs ----------------------------------------------------------------------------------------

def run_key(arm: str, model: str, lr: float, seed: int, frac: float = 1.0) -> str:
    return f"{arm}|{model}|{lr:g}|{seed}" + (f"|{frac:g}" if frac != 1 else "")


def train_args(arm: Arm, model: str, lr: float, seed: int, steps: int, mode: dict, corpus: dict, out: str,
               base: str, device: str) -> list[str]:
    """The trainer's command line for one run."""
    budget = steps * mode["tokens_per_step"]
    seq = mode["seq_len"]
    curriculum = f"{seq // 2}:{int(0.4 * budget)},{seq}:inf" if arm.curriculum else f"{seq}:inf"
    lrs = (["--optim.adamw_lr", f"{lr:g}"] if arm.optim == "adamw" else
           ["--optim.lr", f"{lr:g}", "--optim.adamw_lr", f"{lr * MUON_ADAMW_RATIO:g}"])
    args = ["configs/tiny.yaml", "--model.preset", model, "--mup.enabled", str(arm.mup).lower(),
            "--mup.base_width", str(preset_width(base)), "--optim.name", arm.optim, *lrs,
            "--optim.ns_method", arm.ns_method, "--data.source", corpus["source"], "--data.val_source",
            corpus["val_source"], "--data.tokenizer", corpus["tokenizer"], "--data.val_docs", "100000",
            "--data.curriculum", curriculum, "--train.steps", str(steps),
            "--train.tokens_per_step", str(mode["tokens_per_step"]), "--train.seed", str(seed), "--data.seed",
            str(seed), "--train.eval_every", str(mode["eval_every"]), "--train.eval_batches",
            str(mode["eval_batches"]), "--train.out_dir", out, "--checkpoint.every", "0", "--checkpoint.keep", "1",
            "--checkpoint.resume", "null", "--log.trackers", "[]", "--log.progress", "false",
            "--ema.enabled", "false", "--export.weights", "raw"]
    if device == "cuda":
        return [*args, "--accelerate-config", "accelerate_configs/1gpu.yaml", "--dist.deepspeed_config",
                "ds_configs/zero2_gpu.json"]
    return [*args, "--dist.deepspeed_config", "null", "--train.compile", "false"]


def preset_width(name: str) -> int:
    from models.presets import PRESETS

    return PRESETS[name]["d_model"]


def train(job: dict, mode: dict, corpus: dict, work: str, device: str) -> dict:
    """One trainer run; its validation curve, step times and wall-clock."""
    arm = next(a for a in ARMS if a.name == job["arm"])
    out = os.path.join(work, "runs", run_key(**job).replace("|", "_"))
    steps = round(mode["steps"] * job.get("frac", 1.0))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "train",
                        *train_args(arm, job["model"], job["lr"], job["seed"], steps, mode, corpus, out,
                                    mode.get("base", mode["models"][0]), device)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=4 * 3600)
    row = dict(job, seconds=round(time.time() - t0, 1), exit=r.returncode)
    try:
        hist = json.load(open(os.path.join(out, "ranks", "rank0.json")))["history"]
    except (OSError, ValueError):
        hist = []
    if r.returncode not in (0, 3) or not hist:  # 3: diverged (a result); anything else is a broken run
        raise SystemExit(f"{job}: exit {r.returncode}\n{r.stderr[-3000:]}")
    tps = mode["tokens_per_step"]
    row["curve"] = [(h["step"] * tps, h["val/loss"]) for h in hist if "val/loss" in h]
    row["diverged"] = r.returncode == 3 or not row["curve"] or not all(math.isfinite(v) for _, v in row["curve"])
    row["final"] = row["curve"][-1][1] if row["curve"] and not row["diverged"] else math.inf
    dts = sorted(b["t"] - a["t"] for a, b in zip(hist, hist[1:]))
    row["s_per_step"] = dts[len(dts) // 2] if dts else math.nan  # the median: evaluation steps excluded
    row["us_per_token"] = 1e6 * row["s_per_step"] / tps
    return row


# ---- which runs: sweeps, transfer, seeds ----------------------------------------------------------

def swept(rows: dict, arm: str, model: str, seed: int) -> dict[float, float]:
    return {r["lr"]: r["final"] for r in rows.values()
            if (r["arm"], r["model"], r["seed"], r.get("frac", 1.0)) == (arm, model, seed, 1.0)}


def sweep_next(grid: list[float], done: dict[float, float], max_extend: int = MAX_EXTEND) -> tuple[list[float],
                                                                                                float | None]:
    """The lrs still to run for a sweep over ``grid`` (its first ``points``, centred), and its best lr
    once settled: a best at the edge of what was tried adds the next lr beyond it (factor 2), up to
    ``max_extend`` times."""
    todo = [lr for lr in grid if lr not in done]
    if todo:
        return todo, None
    best = min(done, key=lambda lr: (done[lr], lr))
    tried = sorted(done)
    extended = len(tried) - len(grid)
    if math.isfinite(done[best]) and extended < max_extend:
        if best == tried[0]:
            return [lr_round(best / 2)], None
        if best == tried[-1]:
            return [lr_round(best * 2)], None
    return [], best


def lr_round(lr: float) -> float:
    return float(f"{lr:.4g}")


def centred(grid, points: int) -> list[float]:
    """``points`` lrs from the middle of ``grid``."""
    start = max(0, (len(grid) - points + 1) // 2)
    return [lr_round(lr) for lr in grid[start:start + points]]


def plan(rows: dict, mode: dict) -> tuple[list[dict], dict]:
    """The jobs that can run now, and the lr each (arm, model) has settled on."""
    small, models, seeds = mode["models"][0], mode["models"], mode["seeds"]
    jobs, chosen = [], {}
    for arm in ARMS:
        todo, best = sweep_next(centred(mode.get("grids", {}).get(arm.name, arm.grid), mode["lr_points"]),
                                swept(rows, arm.name, small, seeds[0]), mode.get("max_extend", MAX_EXTEND))
        if arm.name in mode.get("fixed", {}):  # transferred from another sweep
            todo, best = [], mode["fixed"][arm.name]
        jobs += [dict(arm=arm.name, model=small, lr=lr, seed=seeds[0]) for lr in todo]
        if best is None:
            continue
        chosen[(arm.name, small)] = best
        for model in models[1:]:
            lr = best
            if not arm.mup:  # no transfer: swept again, around the small width's best shifted by the width ratio
                ratio = preset_width(small) / preset_width(model)
                grid = centred([best * ratio * f for f in (0.5, 1, 2, 4)], mode["lr_points"])
                todo, lr = sweep_next(grid, swept(rows, arm.name, model, seeds[0]), mode.get("max_extend", MAX_EXTEND))
                jobs += [dict(arm=arm.name, model=model, lr=x, seed=seeds[0]) for x in todo]
                if lr is None:
                    continue
            chosen[(arm.name, model)] = lr
        for (name, model), lr in list(chosen.items()):
            if name == arm.name:
                jobs += [dict(arm=arm.name, model=model, lr=lr, seed=s) for s in seeds]
                if name == SHORT_ARM:
                    jobs += [dict(arm=name, model=model, lr=lr, seed=s, frac=f) for f in mode.get("short", SHORT_FRACS)
                             for s in seeds]
    jobs = [j for j in jobs if run_key(**j) not in rows]
    return list({run_key(**j): j for j in jobs}.values()), chosen


# ---- report ---------------------------------------------------------------------------------------

def tokens_to(curve: list[tuple[int, float]], target: float) -> float:
    """Tokens at which the validation curve first reaches ``target`` (linear between evaluations);
    inf if it never does."""
    prev = None
    for tokens, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(tokens)
            return prev[0] + (tokens - prev[0]) * (prev[1] - target) / (prev[1] - loss)
        prev = (tokens, loss)
    return math.inf


def budget_to(points: list[tuple[float, float]], target: float) -> float:
    """The budget fraction at which final losses trained to each budget (``points``: (fraction, final
    loss)) reach ``target``, linear between budgets; 0 if the shortest already does (read: at most
    it), inf if none does."""
    points = sorted(points)
    if points[0][1] <= target:
        return 0.0
    for (f0, l0), (f1, l1) in zip(points, points[1:]):
        if l1 <= target:
            return f0 + (f1 - f0) * (l0 - target) / (l0 - l1)
    return math.inf


def fastest(rows: dict, arm: str, model: str) -> float:
    """Wall-clock per token of an arm at a width: the least, over its full-budget runs (every lr: the cost of
    a step does not depend on it), of each run's median step time. The least is the run that shared the
    machine least."""
    return min(r["us_per_token"] for r in rows.values()
               if (r["arm"], r["model"], r.get("frac", 1.0)) == (arm, model, 1.0))


def summarize(rows: dict, chosen: dict, mode: dict) -> list[dict]:
    """Per (model, arm) at its chosen lr: final losses, tokens-to-target fractions, time per token."""
    budget = mode["steps"] * mode["tokens_per_step"]
    out = []
    for model in mode["models"]:
        base = {s: rows[run_key(BASELINE, model, chosen[(BASELINE, model)], s)] for s in mode["seeds"]}
        for arm in ARMS:
            if (arm.name, model) not in chosen:
                continue
            runs = [rows[run_key(arm.name, model, chosen[(arm.name, model)], s)] for s in mode["seeds"]]
            fractions = [tokens_to(r["curve"], base[r["seed"]]["final"]) / budget for r in runs]
            short = [] if arm.name != SHORT_ARM or not mode.get("short", SHORT_FRACS) else [
                budget_to([(f, rows[run_key(arm.name, model, chosen[(arm.name, model)], s, f)]["final"])
                           for f in (*mode.get("short", SHORT_FRACS), 1.0)], base[s]["final"]) for s in mode["seeds"]]
            out.append(dict(model=model, arm=arm.name, label=arm.label, lr=chosen[(arm.name, model)],
                            finals=[r["final"] for r in runs], fractions=fractions, short=short,
                            us_per_token=fastest(rows, arm.name, model), base_us_per_token=fastest(rows, BASELINE, model)))
    return out


def fmt_fraction(values: list[float], floor: float = 0.0) -> str:
    if not values:
        return "–"
    if floor and any(v == 0 for v in values):
        return f"<= {floor:g} (" + ", ".join(f"<= {floor:g}" if v == 0 else f"{v:.2f}" for v in values) + ")"
    if not all(math.isfinite(v) for v in values):
        return "not reached (" + ", ".join("> 1" if not math.isfinite(v) else f"{v:.2f}" for v in values) + ")"
    mean = sum(values) / len(values)
    return f"**{mean:.2f}** ({', '.join(f'{v:.2f}' for v in values)})"


def table(summary: list[dict], mode: dict) -> str:
    shortest = min(mode.get("short", SHORT_FRACS) or (1.0,))
    lines = ["| model | arm | lr | final val loss (seeds) | tokens to AdamW (SP)'s final loss, of the budget: on "
             "the full-budget curve (seeds) | the same, trained to a shorter budget (seeds) | wall-clock per token | "
             "vs AdamW (SP) |", "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        finals = ", ".join(f"{v:.3f}" for v in s["finals"])
        lines.append(f"| {s['model']} | {s['label']} | {s['lr']:g} | {finals} | {fmt_fraction(s['fractions'])} | "
                     f"{fmt_fraction(s['short'], shortest)} | "
                     f"{s['us_per_token']:.0f} µs | {s['us_per_token'] / s['base_us_per_token']:.2f}× |")
    return "\n".join(lines)


def sweep_table(rows: dict, mode: dict) -> str:
    lines = ["| model | arm | val loss by lr (seed 0; div: diverged) | chosen |", "|---|---|---|---|"]
    s0 = mode["seeds"][0]
    _, chosen = plan(rows, mode)
    for model in mode["models"]:
        for arm in ARMS:
            done = swept(rows, arm.name, model, s0)
            if len(done) < 2:
                continue
            cells = ", ".join(f"{lr:g}: {'div' if not math.isfinite(v) else f'{v:.3f}'}" for lr, v in sorted(done.items()))
            lines.append(f"| {model} | {arm.label} | {cells} | {chosen.get((arm.name, model), '–')} |")
    return "\n".join(lines)


def plot(rows: dict, chosen: dict, mode: dict, path: str) -> None:
    """Validation loss against tokens, a panel per model, a line per arm (seed mean, band: min-max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(mode["models"]), figsize=(6 * len(mode["models"]), 4.2), squeeze=False)
    for ax, model in zip(axes[0], mode["models"]):
        for k, arm in enumerate(ARMS):
            if (arm.name, model) not in chosen:
                continue
            curves = [rows[run_key(arm.name, model, chosen[(arm.name, model)], s)]["curve"] for s in mode["seeds"]]
            n = min(map(len, curves))
            xs = [c[0] for c in curves[0][:n]]
            ys = [[c[i][1] for c in curves] for i in range(n)]
            color = plt.get_cmap("tab10")(k)
            ax.plot(xs, [sum(y) / len(y) for y in ys], color=color, label=f"{arm.label} (lr {chosen[(arm.name, model)]:g})")
            ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=color, alpha=0.2)
        base = [rows[run_key(BASELINE, model, chosen[(BASELINE, model)], s)]["final"] for s in mode["seeds"]]
        ax.axhline(sum(base) / len(base), color="gray", ls="--", lw=0.8, label="AdamW (SP) final")
        finals = [v for (a, m), lr in chosen.items() if m == model for s in mode["seeds"]
                  for v in [rows[run_key(a, m, lr, s)]["final"]]]
        ax.set_ylim(min(finals) - 0.1, min(finals) + 1.5)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title(f"{model} ({preset_width(model)} wide), {len(mode['seeds'])} seeds")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweeps(rows: dict, mode: dict, path: str) -> None:
    """Final validation loss against lr (seed 0), a panel per model, a line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(mode["models"]), figsize=(6 * len(mode["models"]), 4), squeeze=False)
    for ax, model in zip(axes[0], mode["models"]):
        for k, arm in enumerate(ARMS):
            pts = sorted((lr, v) for lr, v in swept(rows, arm.name, model, mode["seeds"][0]).items() if math.isfinite(v))
            if len(pts) > 1:
                ax.plot(*zip(*pts), marker="o", ms=3, color=plt.get_cmap("tab10")(k), label=arm.label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("base lr (AdamW's for AdamW arms, Muon's for Muon arms)")
        ax.set_ylabel("final validation loss")
        ax.set_title(f"lr sweeps, {model}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu}, {os.cpu_count()} cores"
    return f"{device}; torch {torch.__version__}, transformers {transformers.__version__}"


def section(rows: dict, chosen: dict, summary: list[dict], mode: dict, name: str, corpus: dict, minutes: float,
            plots: tuple[str, str]) -> str:
    budget = mode["steps"] * mode["tokens_per_step"]
    return "\n".join([
        f"Generated by `scripts/bench/convergence.py{' --' + name if name != 'full' else ''}` in {minutes:.0f} min of runs "
        f"({versions()}; {mode['procs']} single-thread runs side by side). Corpus `{corpus['hash']}`: "
        f"{corpus['files']:,} `*.py` files of site-packages, {corpus['duplicates']} exact duplicates and "
        f"{corpus['too_short']} near-empty files removed, cut into {corpus['train_pieces']:,} training pieces of "
        f"<= {code_corpus.PIECE_CHARS} characters ({corpus['train_tokens'] / 1e6:.1f}M tokens, BPE {corpus['vocab_size']}) "
        f"and {corpus['val_pieces']} validation pieces from {corpus['val_files']} held-out files "
        f"({corpus['val_tokens'] / 1e3:.0f}K tokens; {mode['eval_batches']} batches of "
        f"{mode['tokens_per_step'] // mode['seq_len']} × {mode['seq_len']} evaluated every {mode['eval_every']} steps). "
        f"Budget: {mode['steps']} steps × {mode['tokens_per_step']:,} tokens = {budget / 1e3:.0f}K tokens per run, "
        f"{budget / corpus['train_tokens']:.1%} of the corpus; seeds {', '.join(map(str, mode['seeds']))} "
        f"(model init and data order); {len(rows)} runs. Wall-clock per token: the least, over the arm's runs at "
        f"that width, of a run's median step time (evaluations excluded) per token, {mode['procs']} runs sharing "
        f"the machine.",
        "",
        table(summary, mode),
        "",
        "LR sweeps (the μP arms' larger model takes the small model's base lr; AdamW (SP) is swept again):",
        "",
        sweep_table(rows, mode),
        "",
        f"Curves: `{plots[0]}`; sweeps: `{plots[1]}`.",
    ])


def transferred_lr(arm: str) -> float:
    """The base lr the full CPU comparison chose for ``arm`` at its small width (results.json), else the
    recipe's (configs/tiny.yaml: 0.02)."""
    path = os.path.join(ROOT, "runs", "convergence", "full", "results.json")
    if os.path.exists(path):
        saved = json.load(open(path))
        _, chosen = plan(saved["rows"], saved["mode"])
        if (arm, saved["mode"]["models"][0]) in chosen:
            return chosen[(arm, saved["mode"]["models"][0])]
    return 0.02


# ---- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    global ARMS  # --arms narrows the comparison
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--quick", action="store_true", help="the same code paths in ~10 minutes")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cuda: Muon + μP against tuned AdamW at 125m on one GPU")
    ap.add_argument("--procs", type=int, default=None, help="runs side by side (default: 2 on CPU, 1 on CUDA)")
    ap.add_argument("--arms", default=",".join(a.name for a in ARMS))
    ap.add_argument("--steps", type=int, default=None, help="override the mode's steps per run")
    ap.add_argument("--lr-points", type=int, default=None, help="override the mode's lrs per sweep")
    ap.add_argument("--seeds", default=None, help="override the mode's seeds, e.g. 0,1")
    ap.add_argument("--max-extend", type=int, default=None, help=f"lrs a sweep may add past an edge of its grid "
                    f"(default {MAX_EXTEND})")
    ap.add_argument("--short-fracs", default=None, help=f"budget fractions {SHORT_ARM} also trains to (default "
                    f"{','.join(map(str, SHORT_FRACS))}; 'none': none)")
    ap.add_argument("--corpus-root", default=None, help="the *.py tree to build the corpus from (default: "
                    "this environment's site-packages)")
    ap.add_argument("--work", default=None, help="run directories and results.json (default runs/convergence/MODE)")
    ap.add_argument("--no-write", action="store_true", help="print the section; leave BENCHMARKS.md and docs/ alone")
    args = ap.parse_args(argv)
    name = "cuda" if args.device == "cuda" else "quick" if args.quick else "full"
    mode = dict(MODES[name])
    if args.procs:
        mode["procs"] = args.procs
    if args.steps:
        mode["steps"] = args.steps
    if args.lr_points:
        mode["lr_points"] = args.lr_points
    if args.seeds:
        mode["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.max_extend is not None:
        mode["max_extend"] = args.max_extend
    if args.short_fracs:
        mode["short"] = () if args.short_fracs == "none" else tuple(float(f) for f in args.short_fracs.split(","))
    unknown = set(args.arms.split(",")) - {a.name for a in ARMS}
    if unknown or BASELINE not in args.arms.split(","):
        ap.error(f"--arms: unknown {sorted(unknown)} or no {BASELINE} (the baseline); choose from "
                 f"{', '.join(a.name for a in ARMS)}")
    ARMS = tuple(a for a in ARMS if a.name in args.arms.split(","))
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device here; run it on a GPU machine (README: the GPU kit)")
        ARMS = tuple(a for a in ARMS if a.name in CUDA_ARMS)
        mode["fixed"] = {"muon_mup": transferred_lr("muon_mup")}
    work = os.path.abspath(args.work or os.path.join(ROOT, "runs", "convergence", name))
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    corpus_dir = os.path.join(work, "corpus") if args.corpus_root else os.path.join(ROOT, "runs", "convergence", "corpus")
    corpus = code_corpus.build(corpus_dir, root=args.corpus_root)
    print(f"corpus {corpus['hash']}: {corpus['train_tokens'] / 1e6:.1f}M training tokens; work dir {work}", flush=True)
    results = os.path.join(work, "results.json")
    saved = json.load(open(results)) if os.path.exists(results) else {}
    same = saved.get("mode") == json.loads(json.dumps(mode))  # a run of another mode or budget is not reused
    rows = saved.get("rows", {}) if same else {}
    before = saved.get("elapsed_s", 0.0) if same else 0.0  # earlier invocations' time, for the report
    while True:
        jobs, chosen = plan(rows, mode)
        if not jobs:
            break
        jobs.sort(key=lambda j: -preset_width(j["model"]))  # the slow ones first: a fuller pool
        with concurrent.futures.ThreadPoolExecutor(mode["procs"]) as pool:
            for row in pool.map(lambda j: train(j, mode, corpus, work, args.device), jobs):
                rows[run_key(row["arm"], row["model"], row["lr"], row["seed"], row.get("frac", 1.0))] = row
                print(f"[{len(rows)}] {row['arm']} {row['model']} lr {row['lr']:g} seed {row['seed']}"
                      f"{' budget x%g' % row['frac'] if 'frac' in row else ''}: "
                      f"val {row['final']:.4f}{' DIVERGED' if row['diverged'] else ''} "
                      f"({row['seconds']:.0f} s, {row['us_per_token']:.0f} µs/token)", flush=True)
                json.dump({"mode": mode, "rows": rows, "elapsed_s": before + time.time() - t0}, open(results, "w"),
                          indent=1)
    summary = summarize(rows, chosen, mode)
    suffix = "" if name == "full" else f"_{name}"
    plots = (f"docs/bench/convergence{suffix}.png", f"docs/bench/convergence{suffix}_lr.png")
    if args.no_write:
        plots = tuple(os.path.join(work, os.path.basename(p)) for p in plots)
    plot(rows, chosen, mode, os.path.join(ROOT, plots[0]))
    plot_sweeps(rows, mode, os.path.join(ROOT, plots[1]))
    text = section(rows, chosen, summary, mode, name, corpus, (before + time.time() - t0) / 60, plots)
    print(text)
    if not args.no_write:
        write_between(os.path.join(ROOT, "BENCHMARKS.md"), "convergence" + suffix.replace("_", "-"), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
