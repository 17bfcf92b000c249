"""Issue 20's GPU half: does every GPU path of the trainer run, and how fast is the trainer end to end
against a plain compiled PyTorch loop. One command, about 8 minutes on one H100/H200:

    source .gpu/remote_setup.sh && python3 scripts/bench/gpu.py --out $OUT/gpu      # a GPU machine
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/gpu.py --smoke --out /tmp/gpu   # CPU: the same code, tiny

1. Smoke: one short single-process ``python -m trainer.cli train configs/tiny.yaml`` per path (compile on,
   over two curriculum phases, and off, prefetch on and off, EMA every step with its pinned side-stream
   copy, fused AdamW, activation checkpointing, bf16, fp16 under DeepSpeed and with the trainer's
   GradScaler, ds_configs/zero2_gpu.json, the accelerate_configs/1gpu.yaml launch), several side by side;
   a path works when the run exits 0 with every step's loss finite. The export row loads the eager run's
   ``export/`` with transformers' ``AutoModelForCausalLM`` and checks its logits are finite. A path the
   device cannot run is "n/a" with the reason, never a pass.
2. Throughput, one run at a time: 125m (seq 1024, 131,072 tokens per step, 4 micro-batches) and 1b
   (seq 2048, 65,536 tokens per step, 4 micro-batches), compiled, bf16, ZeRO-2 at one GPU, the loader
   included. Steady state is the mean over the last phase's steps after its first (compilation) and
   ``warm`` more; a step is the time between the ends of consecutive steps (``ranks/rank0.json``'s
   ``t``, CLOCK_MONOTONIC like this process's ``perf_counter``; the first step starts at the trainer's
   "phase 0:" line). MFU is ``trainer.run.metrics``' formula for both sides. The 125m trainer runs:
   ``full`` (Muon, prefetch, EMA every step: the recipes' trainer, on a 2-phase curriculum 512 -> 1024
   whose phase starts give the compile time per phase: first step minus a steady step, data wait
   excluded), ``no_ema`` (EMA overhead = full / no_ema - 1), ``adamw`` (no EMA; Muon overhead =
   no_ema / adamw - 1), ``no_prefetch`` (no EMA; the loader's share of a step without prefetch). The
   plain loop (``--plain-loop``, a subprocess): the config the trainer builds (``build_model_config``),
   the same batch shape, random token ids already on the device, bf16 autocast, fused AdamW (CPU:
   foreach), clipping at 1.0, ``torch.compile``. ``--budget`` seconds bound the whole: a measurement
   that would not fit is reported as skipped, in priority order (the targets' runs first).
3. One table on stdout (smoke rows, then figures with the issue's targets) and ``--out PREFIX``:
   PREFIX.json (device, versions, every figure, every run's steps) and PREFIX.md (the table).

``--smoke`` (and every run on a machine without CUDA) uses the tiny preset and a handful of steps for
the throughput part too; its figures check the code paths, not the targets.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

QUIET = ["--log.trackers", "[]", "--log.progress", "false", "--data.val_every", "0", "--train.tokens", "null",
         "--checkpoint.every", "0", "--checkpoint.keep", "1", "--train.warmup_steps", "2"]
SMOKE_STEPS = 5
GRACE_S = 20  # a job may overrun the budget by this much before it is stopped
SMOKE_RUNS = {  # run -> (overrides of the tiny smoke run, why a CPU cannot run it or None); the longest first
    "compiled": (["--train.compile", "true", "--data.curriculum", "64:2048,128:inf"], None),  # 2 phases: 2 compiles
    "launch_1gpu": (["--accelerate-config", "accelerate_configs/1gpu.yaml"],
                    "accelerate_configs/1gpu.yaml launches on a GPU (use_cpu: false, gpu_ids: 0)"),
    "eager": ([], None),
    "no_prefetch": (["--data.prefetch", "false"], None),
    "adamw": (["--optim.name", "adamw"], None),
    "act_ckpt": (["--train.activation_checkpointing", "true"], None),
    "fp16_deepspeed": (["--train.precision", "fp16"], "DeepSpeed refuses fp16 on a CPU (preflight says so)"),
    "fp16_scaler": (["--train.precision", "fp16", "--dist.deepspeed_config", "null"], None),
    "zero2_gpu": (["--dist.deepspeed_config", "ds_configs/zero2_gpu.json"], None),
}
SMOKE_ROWS = [  # (path, run, why a CPU cannot run this path although the run itself runs)
    ("compile off (eager), ZeRO-2 zero2.json", "eager", None),
    ("compile on (train.compile true; 2 curriculum phases, 2 compiles)", "compiled", None),
    ("prefetch on (data.prefetch true)", "eager", None),
    ("prefetch off", "no_prefetch", None),
    ("EMA every 1", "eager", None),
    ("EMA pinned side-stream device-to-host copy", "eager",
     "without CUDA the EMA reads the weights in place (no pinned copy, no side stream)"),
    ("AdamW (optim.name adamw)", "adamw", None),
    ("fused AdamW", "adamw", "the trainer's AdamW is fused only on CUDA (trainer/optim/__init__.py)"),
    ("activation checkpointing", "act_ckpt", None),
    ("bf16 (train.precision bf16)", "eager", None),
    ("fp16 under DeepSpeed (its loss scaler)", "fp16_deepspeed", None),
    ("fp16 without DeepSpeed (GradScaler)", "fp16_scaler", None),
    ("ds_configs/zero2_gpu.json (overlap_comm)", "zero2_gpu", None),
    ("export: AutoModelForCausalLM loads it, finite logits", "eager", None),
    ("--accelerate-config accelerate_configs/1gpu.yaml", "launch_1gpu", None),
]


@dataclass(frozen=True)
class Shape:
    """One throughput size: the recipe and batch, the curriculum's optional first phase (compile time per
    phase), and the steps: after each phase's first, ``warm`` are dropped and the rest are steady."""

    label: str  # what the table calls it
    preset: str
    recipe: str
    seq_len: int
    tokens_per_step: int
    grad_accum: int
    first_seq: int | None  # a first phase at this length, ``first_steps`` long; None: one phase
    first_steps: int
    warm: int
    steady: int

    def curriculum(self, two_phase: bool) -> str:
        if two_phase and self.first_seq:
            return f"{self.first_seq}:{self.first_steps * self.tokens_per_step},{self.seq_len}:inf"
        return f"{self.seq_len}:inf"

    def steps(self, two_phase: bool) -> int:
        return (self.first_steps if two_phase and self.first_seq else 0) + 1 + self.warm + self.steady

    def overrides(self, two_phase: bool) -> list[str]:
        return [self.recipe, *QUIET, "--train.steps", str(self.steps(two_phase)), "--train.tokens_per_step",
                str(self.tokens_per_step), "--train.grad_accum", str(self.grad_accum), "--data.curriculum",
                self.curriculum(two_phase), "--train.precision", "bf16", "--train.compile", "true"]


GPU_SHAPES = {"small": Shape("125m", "125m", "configs/125m.yaml", 1024, 131_072, 4, 512, 4, 2, 10),
              "large": Shape("1b", "1b", "configs/1b.yaml", 2048, 65_536, 4, None, 0, 2, 6)}
# --smoke: the compiled smoke run's phases (1,024 tokens in 2 micro-batches of 8 x 64, then 4 x 128) are the
# throughput runs' too, so on a CPU the compiled graphs are shared through the inductor cache (a cold compile
# of tiny takes ~50 s on 2 cores, most of the time)
SMOKE_SHAPES = {"small": Shape("tiny in 125m's place", "tiny", "configs/tiny.yaml", 128, 1024, 2, 64, 3, 1, 3),
                "large": Shape("tiny in 1b's place", "tiny", "configs/tiny.yaml", 128, 1024, 2, None, 0, 1, 2)}
TRAINER_VARIANTS = {  # name -> (overrides, 2-phase curriculum)
    "full": (["--optim.name", "muon", "--data.prefetch", "true", "--ema.enabled", "true", "--ema.every", "1"], True),
    "no_ema": (["--optim.name", "muon", "--data.prefetch", "true", "--ema.enabled", "false"], False),
    "adamw": (["--optim.name", "adamw", "--data.prefetch", "true", "--ema.enabled", "false"], False),
    "no_prefetch": (["--optim.name", "muon", "--data.prefetch", "false", "--ema.enabled", "false"], False),
}
# (size, variant or "plain", estimated seconds on an H100/H200): the targets' runs first
THROUGHPUT_JOBS = [("small", "full", 110), ("small", "plain", 60), ("small", "no_ema", 40), ("small", "adamw", 40),
                   ("large", "full", 150), ("small", "no_prefetch", 40), ("large", "plain", 80)]


# -- launching -----------------------------------------------------------------------------------------------
@dataclass
class Launch:
    """One finished subprocess: its exit code, wall seconds, when it printed "phase 0:" (perf_counter),
    its output, and the last error line when it failed."""

    name: str
    out_dir: str
    rc: int | None = None
    seconds: float = 0.0
    start: float = 0.0
    phase0_at: float | None = None
    stdout: str = ""
    error: str | None = None


def run_command(name: str, cmd: list[str], out_dir: str, env: dict, timeout: float) -> Launch:
    """Run ``cmd`` in a session of its own (killed as a group after ``timeout``), its stdout read line by
    line on a thread: a helper process it leaves behind holding the pipe cannot block us."""
    os.makedirs(out_dir, exist_ok=True)
    res, lines = Launch(name, out_dir, start=time.perf_counter()), []
    with open(os.path.join(out_dir, "bench-stderr.log"), "w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        reader = threading.Thread(target=read_lines, args=(proc.stdout, res, lines), daemon=True)
        reader.start()
        try:
            res.rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            res.rc = proc.wait()
        reader.join(10)
        err.seek(0)
        stderr = err.read()
    res.seconds, res.stdout = time.perf_counter() - res.start, "".join(lines)
    if res.rc != 0:
        res.error = (f"timed out after {timeout:.0f} s; " if res.rc == -signal.SIGKILL else "") + \
            last_error_line(stderr + res.stdout + launcher_logs(out_dir))
    return res


def read_lines(stream, res: Launch, lines: list[str]) -> None:
    """Keep ``stream``'s lines; note when the trainer says "phase 0:" (its first step starts)."""
    for line in stream:
        if res.phase0_at is None and line.startswith("phase 0:"):
            res.phase0_at = time.perf_counter()
        lines.append(line)


def last_error_line(text: str) -> str:
    """The last line that names an error (an exception, ``error:``), else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"(Error|Exception|error:|Killed)", ln) and "Warning" not in ln]
    return (errors or lines or ["(no output)"])[-1][:400]


def launcher_logs(out_dir: str) -> str:
    """The launch logs of a ``--accelerate-config`` run (the workers' tracebacks go there)."""
    logs = os.path.join(out_dir, "logs")
    names = sorted(os.listdir(logs)) if os.path.isdir(logs) else []
    return "".join(open(os.path.join(logs, n), errors="replace").read() for n in names)


def trainer_command(args: list[str], out_dir: str) -> list[str]:
    return [sys.executable, "-m", "trainer.cli", "train", *args, "--train.out_dir", out_dir]


def child_env(base: dict, threads: int | None) -> dict:
    env = dict(base, WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def rank0(out_dir: str) -> dict:
    """The run's ``ranks/rank0.json`` (its ``history``: one row per step), {} when it wrote none."""
    path = os.path.join(out_dir, "ranks", "rank0.json")
    return json.load(open(path)) if os.path.exists(path) else {}


# -- smoke ------------------------------------------------------------------------------------------------------
def smoke_args(run: str) -> list[str]:
    """The tiny smoke run's command-line arguments: the common settings, ``run``'s own over them."""
    settings = {"train.steps": str(SMOKE_STEPS), "train.tokens_per_step": "1024", "train.grad_accum": "2",
                "data.curriculum": "128:inf",
                "train.precision": "bf16", "train.compile": "false", "ema.enabled": "true", "ema.every": "1"}
    own = SMOKE_RUNS[run][0]
    settings.update(zip([k[2:] for k in own[::2]], own[1::2]))
    return ["configs/tiny.yaml", *QUIET, *[x for k, v in settings.items() for x in (f"--{k}", v)]]


def smoke_verdict(res: Launch) -> str | None:
    """None when the run worked (exit 0, every step recorded, every loss finite, an EMA kept), else why not."""
    if res.rc != 0:
        return f"exit {res.rc}: {res.error}"
    summary = rank0(res.out_dir)
    rows = summary.get("history", [])
    if len(rows) != SMOKE_STEPS:
        return f"ranks/rank0.json holds {len(rows)} of {SMOKE_STEPS} steps"
    bad = [r["step"] for r in rows if not math.isfinite(r["loss"])]
    if bad:
        return f"non-finite loss at steps {bad}"
    return None if summary.get("ema_bytes") else "the run kept no EMA (ema.enabled true)"


def check_export(export_dir: str) -> str | None:
    """None when ``export_dir`` loads with AutoModelForCausalLM and gives finite logits, else the error."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
        ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    except Exception as e:  # any failure to load or run is the row's answer
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
    return None if bool(torch.isfinite(logits).all()) else "non-finite logits"


def smoke(tmp: str, cuda: bool, parallel: int, env: dict, deadline: float) -> list[dict]:
    """Every smoke run this device can run, ``parallel`` at a time; one row per path."""
    runs = [r for r, (_, why) in SMOKE_RUNS.items() if cuda or why is None]
    dirs = {r: os.path.join(tmp, "smoke", r) for r in runs}

    def one(run: str) -> Launch:
        timeout = max(60.0, min(300.0 if cuda else 900.0, deadline - time.monotonic() + GRACE_S))
        return run_command(f"smoke {run}", trainer_command(smoke_args(run), dirs[run]), dirs[run], env, timeout)

    with ThreadPoolExecutor(parallel) as pool:
        done = dict(zip(runs, pool.map(one, runs)))
    verdicts = {r: smoke_verdict(res) for r, res in done.items()}
    rows = []
    for path, run, cpu_why in SMOKE_ROWS:
        why = SMOKE_RUNS[run][1] or cpu_why
        if not cuda and why:
            rows.append({"path": path, "run": run, "status": "n/a on cpu", "seconds": None, "reason": why})
            continue
        error = verdicts[run]
        if error is None and path.startswith("export"):
            error = check_export(os.path.join(dirs[run], "export"))
        rows.append({"path": path, "run": run, "status": "fails" if error else "works",
                     "seconds": round(done[run].seconds, 1), "error": error})
        print(f"smoke: {path}: {rows[-1]['status']}" + (f" ({error})" if error else ""), flush=True)
    return rows


# -- throughput ---------------------------------------------------------------------------------------------
def flops_per_token(shape: Shape, seq_len: int) -> float:
    """``trainer.run.metrics.flops_per_token`` of the model the trainer builds for ``shape`` (counted on
    the meta device: no memory, no init)."""
    import torch

    from models import build_model
    from trainer.run import metrics

    config = model_config_of(shape)
    with torch.device("meta"):
        model = build_model(config)
    return metrics.flops_per_token(metrics.matmul_params(model), config.num_hidden_layers, config.hidden_size,
                                   seq_len)


def model_config_of(shape: Shape):
    """The transformers config ``scaleout train`` builds for ``shape`` (tokenizer trained once, cached)."""
    from trainer.config import load_config
    from trainer.data import build_tokenizer
    from trainer.run.build import build_model_config

    cfg = load_config(shape.recipe, shape.overrides(False)[1:] + ["--train.out_dir", tempfile.gettempdir()])
    return build_model_config(cfg, build_tokenizer(cfg.data))


def durations(rows: list[dict], phase0_at: float | None) -> list[float]:
    """Seconds per step: between the ends of consecutive steps; the first from the "phase 0:" line."""
    ts = [r["t"] for r in rows]
    first = ts[0] - phase0_at if phase0_at is not None and ts else math.nan
    return [first] + [b - a for a, b in zip(ts, ts[1:])]


def phase_figures(rows: list[dict], dur: list[float], warm: int) -> list[dict]:
    """Per curriculum phase: its steps, the steady step and data wait (after the first and ``warm``
    steps), and the compile time: the first step's compute (data wait excluded) minus a steady one's."""
    out = []
    for seq in dict.fromkeys(r["seq_len"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["seq_len"] == seq]
        steady = idx[1 + warm:]
        if not steady:
            continue
        compute = statistics.mean(dur[i] - rows[i]["data_wait_s"] for i in steady)
        step_s = statistics.mean(dur[i] for i in steady)
        out.append({"seq_len": seq, "steps": len(idx), "steady_steps": len(steady), "step_s": step_s,
                    "data_wait_s": statistics.mean(rows[i]["data_wait_s"] for i in steady),
                    "compile_s": dur[idx[0]] - rows[idx[0]]["data_wait_s"] - compute})
    return out


def speed(step_s: float, shape: Shape, flops: float, peak: float) -> dict:
    from trainer.run.metrics import mfu

    tok_s = shape.tokens_per_step / step_s
    return {"step_s": step_s, "tokens_per_s": tok_s, "mfu": mfu(tok_s, flops, 1, peak)}


def trainer_job(shape: Shape, variant: str, tmp: str, env: dict, timeout: float, flops: float, peak: float) -> dict:
    """One trainer run of ``shape``; its steady figures (last phase), per-phase compile times."""
    overrides, two_phase = TRAINER_VARIANTS[variant]
    out = tempfile.mkdtemp(prefix=f"{shape.preset}-{variant}-", dir=tmp)
    res = run_command(f"{shape.preset} {variant}", trainer_command(shape.overrides(two_phase) + overrides, out), out,
                      env, timeout)
    rows = rank0(out).get("history", [])
    fig = {"kind": "trainer", "preset": shape.preset, "variant": variant, "rc": res.rc, "error": res.error,
           "wall_s": res.seconds, "curriculum": shape.curriculum(two_phase), "steps": len(rows)}
    dur = durations(rows, res.phase0_at)
    phases = phase_figures(rows, dur, shape.warm) if res.rc == 0 else []
    if phases:
        last = phases[-1]
        fig.update(speed(last["step_s"], shape, flops, peak), phases=phases, data_wait_s=last["data_wait_s"],
                   loader_share=last["data_wait_s"] / last["step_s"], startup_s=rows[0]["t"] - res.start,
                   peak_memory_gb=max(r["peak_memory_gb"] for r in rows), step_durations=dur,
                   data_waits=[r["data_wait_s"] for r in rows], seq_lens=[r["seq_len"] for r in rows])
    shutil.rmtree(out, ignore_errors=True)  # a 1b run leaves ~20 GB of checkpoint and export
    return fig


def plain_job(shape: Shape, tmp: str, env: dict, timeout: float, flops: float, peak: float) -> dict:
    """The plain compiled loop of ``shape`` in a subprocess (``--plain-loop``)."""
    out = tempfile.mkdtemp(prefix=f"{shape.preset}-plain-", dir=tmp)
    spec = {"shape": asdict(shape), "result": os.path.join(out, "result.json")}
    with open(os.path.join(out, "spec.json"), "w") as f:
        json.dump(spec, f)
    res = run_command(f"{shape.preset} plain", [sys.executable, os.path.abspath(__file__), "--plain-loop",
                                                 os.path.join(out, "spec.json")], out, env, timeout)
    fig = {"kind": "plain", "preset": shape.preset, "variant": "plain", "rc": res.rc, "error": res.error,
           "wall_s": res.seconds}
    if res.rc == 0:
        got = json.load(open(spec["result"]))
        steady = got["durations"][1 + shape.warm:]
        fig.update(speed(statistics.mean(steady), shape, flops, peak), step_durations=got["durations"],
                   compile_s=got["durations"][0] - statistics.mean(steady), peak_memory_gb=got["peak_memory_gb"])
    shutil.rmtree(out, ignore_errors=True)
    return fig


def plain_loop(spec_path: str) -> None:
    """``--plain-loop SPEC``: the plain compiled PyTorch loop; writes its step durations to the spec's result."""
    import torch

    from models import build_model

    spec = json.load(open(spec_path))
    shape = Shape(**spec["shape"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = model_config_of(shape)
    with torch.device(device):  # initialised where it trains (a 1b model's init on a CPU takes a while)
        model = build_model(config, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=cuda, foreach=not cuda)
    compiled = torch.compile(model, dynamic=False)
    steps, rows = 1 + shape.warm + shape.steady, shape.tokens_per_step // (shape.grad_accum * shape.seq_len)
    data = torch.randint(0, config.vocab_size, (steps, shape.grad_accum, rows, shape.seq_len),
                         generator=torch.Generator().manual_seed(0)).to(device)
    dur = []
    for step in range(steps):
        t0 = time.perf_counter()
        for x in data[step]:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = compiled(input_ids=x, labels=x).loss / shape.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the trainer reads its loss every step too: both wait for the device here
        dur.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    with open(spec["result"], "w") as f:
        json.dump({"durations": dur, "peak_memory_gb": peak}, f)


def throughput(tmp: str, shapes: dict, jobs: list, env: dict, deadline: float, parallel: int, runs: list[dict],
               saved) -> None:
    """The measurement jobs in priority order, ``parallel`` at a time (1 on a GPU), each appended to ``runs``
    as it ends (then ``saved()``); one whose estimate does not fit before ``deadline`` is skipped, one that
    overruns it by ``GRACE_S`` is stopped."""
    from trainer.run.metrics import peak_flops_per_device

    peak = peak_flops_per_device()
    flops = {size: flops_per_token(shape, shape.seq_len) for size, shape in shapes.items()}

    def one(job):
        size, variant, estimate = job
        left = deadline - time.monotonic()
        if left < estimate:
            return {"kind": "plain" if variant == "plain" else "trainer", "preset": shapes[size].label,
                    "variant": variant, "size": size, "skipped": f"time budget ({left:.0f} s left, ~{estimate} s)"}
        args = (tmp, env, left + GRACE_S, flops[size], peak)
        fig = plain_job(shapes[size], *args) if variant == "plain" else trainer_job(shapes[size], variant, *args)
        fig.update(size=size, preset=shapes[size].label)
        print(f"throughput: {size} {variant}: " + (f"{fig['tokens_per_s']:,.0f} tok/s, {fig['mfu']:.1%} MFU"
                                                      if "tokens_per_s" in fig else f"FAILED ({fig['error']})"),
              f"({fig['wall_s']:.0f} s)", flush=True)
        return fig

    def record(job):
        runs.append(one(job))
        saved()

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(record, jobs))


# -- figures and the table ----------------------------------------------------------------------------------
def find(runs: list[dict], size: str, variant: str) -> dict:
    return next((r for r in runs if r["size"] == size and r["variant"] == variant), {})


def ratio(a: dict, b: dict, key: str) -> float | None:
    return a[key] / b[key] if key in a and key in b else None


def figures(runs: list[dict], shapes: dict) -> list[dict]:
    """Every figure with its issue target: (key, label, value, unit, target text, test of the value)."""
    small, large = shapes["small"].label, shapes["large"].label
    full, plain, no_ema = find(runs, "small", "full"), find(runs, "small", "plain"), find(runs, "small", "no_ema")
    lfull, lplain = find(runs, "large", "full"), find(runs, "large", "plain")
    out = []

    def add(key, label, value, unit, target=None, test=None):
        value = value if value is not None and math.isfinite(value) else None
        met = None if value is None or test is None else bool(test(value))
        out.append({"key": key, "label": label, "value": value, "unit": unit, "target": target, "met": met})

    for size, preset, trainer, loop in (("small", small, full, plain), ("large", large, lfull, lplain)):
        mfu_test = (lambda v: v >= 0.45) if size == "large" else None
        add(f"trainer_tokens_per_s_{size}", f"trainer end to end, {preset}: tokens/s", trainer.get("tokens_per_s"),
            "tok/s")
        add(f"trainer_mfu_{size}", f"trainer end to end, {preset}: MFU", trainer.get("mfu"), "%",
            ">= 45%" if size == "large" else None, mfu_test)
        add(f"plain_tokens_per_s_{size}", f"plain compiled loop, {preset}: tokens/s", loop.get("tokens_per_s"),
            "tok/s")
        add(f"plain_mfu_{size}", f"plain compiled loop, {preset}: MFU", loop.get("mfu"), "%")
        add(f"trainer_vs_plain_{size}", f"trainer / plain loop, {preset}", ratio(trainer, loop, "tokens_per_s"),
            "x", ">= 1.0x" if size == "small" else None, (lambda v: v >= 1.0) if size == "small" else None)
    muon = ratio(no_ema, find(runs, "small", "adamw"), "step_s")
    add("muon_overhead_small", f"Muon overhead over AdamW, {small}", muon - 1 if muon else None, "+%", "<= 3%",
        lambda v: v <= 0.03)
    add("loader_share_prefetch_small", f"loader share of a step, prefetch, {small}", full.get("loader_share"), "%",
        "< 1%", lambda v: v < 0.01)
    add("loader_share_no_prefetch_small", f"loader share of a step, no prefetch, {small}",
        find(runs, "small", "no_prefetch").get("loader_share"), "%")
    ema = ratio(full, no_ema, "step_s")
    add("ema_overhead_small", f"EMA overhead (every 1), {small}", ema - 1 if ema else None, "+%", "<= 1%",
        lambda v: v <= 0.01)
    for i, phase in enumerate(full.get("phases", [])):
        add(f"compile_s_phase{i}_small", f"compile, {small} phase {i} (seq {phase['seq_len']})", phase["compile_s"],
            "s")
    for size, preset, run in (("large", large, lfull), ("plain_small", small, plain), ("plain_large", large, lplain)):
        value = run["phases"][-1]["compile_s"] if "phases" in run else run.get("compile_s")
        what = "plain loop" if size.startswith("plain") else "trainer"
        add(f"compile_s_{size}", f"compile, {what} {preset} (first step - steady)", value, "s")
    return out


def show(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return {"tok/s": f"{value:,.0f} tok/s", "%": f"{value:.1%}", "+%": f"{value:+.1%}", "x": f"{value:.2f}x",
            "s": f"{value:.1f} s"}[unit]


def table(smoke_rows: list[dict], figs: list[dict], runs: list[dict], cuda: bool) -> str:
    out = ["| check | result | seconds | target | met |", "|---|---|---|---|---|"]
    for r in smoke_rows:
        result = r["status"] + (f": {r['reason']}" if r.get("reason") else "") + \
            (f": {r['error']}" if r.get("error") else "")
        out.append(f"| smoke: {r['path']} | {result.replace('|', '/')} | {r['seconds'] or '-'} | | |")
    for f in figs:
        met = "-" if f["met"] is None or not cuda else ("yes" if f["met"] else "NO")
        out.append(f"| {f['label']} | {show(f['value'], f['unit'])} | | {f['target'] or ''} | {met} |")
    for r in runs:
        if r.get("skipped") or r.get("error"):
            why = r.get("skipped") or r["error"]
            out.append(f"| run {r['preset']} {r['variant']} | {'skipped' if r.get('skipped') else 'FAILED'}: "
                       f"{why.replace('|', '/')} | {r.get('wall_s', 0):.0f} | | |")
    return "\n".join(out)


# -- the whole ------------------------------------------------------------------------------------------------
def device_info() -> dict:
    import torch

    versions = {}
    for name in ("torch", "transformers", "deepspeed", "accelerate", "datasets"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "device": torch.cuda.get_device_name() if cuda else cpu_model(), "versions": versions,
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def warm_tokenizers(shapes: dict) -> None:
    """Train each BPE the runs need once (cached): concurrent runs would each train it."""
    for shape in shapes.values():
        model_config_of(shape)


def write_report(prefix: str, report: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(prefix + ".md", "w") as f:
        f.write(f"# scripts/bench/gpu.py on {report['device']}\n\n{json.dumps(report['versions'])}\n\n"
                f"{report['table']}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--out", help="write PREFIX.json and PREFIX.md")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and few steps (forced without CUDA)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole (default: 440 on CUDA, 1800 without): a job that would end later "
                         "is skipped")
    ap.add_argument("--parallel", type=int, default=None, help="smoke runs side by side (default: 2/3 of the "
                    "cores, at least 2, at most the number of runs)")
    ap.add_argument("--no-smoke", action="store_true", help="skip the smoke runs")
    ap.add_argument("--jobs", default=None, help="throughput jobs, e.g. small.full,small.plain (default: all)")
    ap.add_argument("--plain-loop", metavar="SPEC", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.plain_loop:
        plain_loop(a.plain_loop)
        return 0
    started = time.monotonic()
    info = device_info()
    cuda, smoke_mode = info["cuda"], a.smoke or not info["cuda"]
    deadline = started + (a.budget or (440 if cuda else 1800))
    shapes = SMOKE_SHAPES if smoke_mode else GPU_SHAPES
    jobs = [j for j in THROUGHPUT_JOBS if a.jobs is None or f"{j[0]}.{j[1]}" in a.jobs.split(",")]
    parallel = a.parallel or max(2, min(len(SMOKE_RUNS), (os.cpu_count() or 2) * 2 // 3))
    tmp = tempfile.mkdtemp(prefix="scaleout-gpu-bench-")
    base_env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(tmp, "inductor"),  # cold: compile is measured
                    TRITON_CACHE_DIR=os.path.join(tmp, "triton"))
    rows, runs, lock = [], [], threading.Lock()

    def report() -> dict:
        figs = figures(runs, shapes)
        return {**info, "smoke_mode": smoke_mode, "command": sys.argv, "seconds": time.monotonic() - started,
                "shapes": {k: asdict(v) for k, v in shapes.items()}, "smoke": rows, "figures": figs, "runs": runs,
                "table": table(rows, figs, runs, cuda and not smoke_mode)}

    def saved() -> None:  # after every measurement: a command cut short still leaves what it measured
        if a.out:
            with lock:
                write_report(a.out, report())

    print(f"gpu.py: {info['device']}, {'--smoke' if smoke_mode else 'full'}, {deadline - started:.0f} s budget",
          flush=True)
    try:
        warm_tokenizers({"smoke": SMOKE_SHAPES["small"], **shapes})
        smoke_threads = max(1, (os.cpu_count() or 1) // parallel) if cuda else 1  # side by side: share the cores
        rows += [] if a.no_smoke else smoke(tmp, cuda, parallel, child_env(base_env, smoke_threads), deadline)
        saved()
        throughput(tmp, shapes, jobs, child_env(base_env, None if cuda else 1), deadline, 1 if cuda else 2, runs,
                   saved)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    final = report()
    print(f"\n{info['device']} | " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
          + (" | --smoke: the figures check the code paths, not the targets" if smoke_mode else ""))
    print(final["table"], flush=True)
    if a.out:
        write_report(a.out, final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
