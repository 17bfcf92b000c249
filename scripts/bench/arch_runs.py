"""Issue 18's acceptance, measured: every architecture trains as the README's main job does (the embedded
corpus, 2 CPU processes, ZeRO-2, sharded Muon, EMA), its validation loss falls, a run stopped half-way and
resumed ends bit-exact with the uninterrupted one, and its export computes the trainer's logits.

    .venv/bin/python scripts/bench/arch_runs.py [--steps 40] [--types granite_swa,granitemoe,...]

For each architecture (granite_swa, granitemoe, deepseek_v3, qwen3, and a Mistral passed only as a
``config.json`` through ``model.config``), three launches of ``scaleout train configs/tiny.yaml`` (muP
where the class carries it, the BPE tokenizer on the stdlib corpus, tokens_per_step 2048, curriculum
128:inf, raw-weights export):

  whole    --steps N                                  validation at N/2 and N
  stopped  --steps N --train.stop_at_step N/2         (a checkpoint at N/2, exit 0)
  resumed  --steps N                                  (the same command: resumes at N/2)

Reported: the validation loss of a model at step 0 (uniform output: ln 4096 = 8.32 nats) against the
whole run's at N; whether the resumed run's final weights, fp32 master weights and optimizer state hash
equal the whole run's (``ranks/rank*.json``); the largest |logit| difference between the export (loaded
with ``AutoModelForCausalLM``) and the model the trainer builds from the final checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

MISTRAL = {"model_type": "mistral", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
           "sliding_window": 64, "vocab_size": 1000, "tie_word_embeddings": True}
TYPES = ("granite_swa", "granitemoe", "deepseek_v3", "qwen3", "config:mistral")


def launch(args: list[str], out: str) -> float:
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", "--accelerate-config",
                        "accelerate_configs/cpu_2proc_zero2.yaml", *args, "--train.out_dir", out], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"{args}: exit {r.returncode}\n{r.stderr[-3000:]}")
    return time.time() - t


def summary(out: str) -> list[dict]:
    return [json.load(open(os.path.join(out, "ranks", f"rank{r}.json"))) for r in (0, 1)]


def export_vs_trainer(out: str, steps: int) -> float:
    """Largest |logit| difference: the export against the trainer's own build of the last checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    from models import build_model, load_model_config
    from trainer.state.reader import read_buffers, read_named_tensors

    ckpt = os.path.join(out, "checkpoints", f"step_{steps:06d}")
    model = build_model(load_model_config(os.path.join(ckpt, "model_config.json"))).eval()
    state = {**read_named_tensors(ckpt, whole=True), **read_buffers(ckpt)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)  # a tied readout
    exported = AutoModelForCausalLM.from_pretrained(os.path.join(out, "export"), dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (model(input_ids=ids).logits - exported(input_ids=ids).logits).abs().max().item()


def measure(kind: str, steps: int, tmp: str) -> dict:
    args = ["--train.steps", str(steps), "--train.eval_every", str(steps // 2), "--train.tokens_per_step", "2048",
            "--data.curriculum", "128:inf", "--checkpoint.every", str(steps // 2), "--log.trackers", "[]",
            "--log.progress", "false", "--export.weights", "raw", "--train.warmup_steps", "4"]
    if kind.startswith("config:"):
        path = os.path.join(tmp, "mistral", "config.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        json.dump(MISTRAL, open(path, "w"))
        args += ["--model.config", path, "--mup.enabled", "false"]
    else:
        from models import MUP_TYPES

        args += ["--model.type", kind, "--mup.enabled", "true" if kind in MUP_TYPES else "false"]
    whole, split = os.path.join(tmp, kind, "whole"), os.path.join(tmp, kind, "split")
    seconds = launch(args, whole)
    launch([*args, "--train.stop_at_step", str(steps // 2)], split)
    launch(args, split)
    a, b = summary(whole), summary(split)
    keys = ("weights_sha256", "master_sha256", "optimizer_sha256", "ema_sha256")
    exact = all(x[k] == y[k] for x, y in zip(a, b) for k in keys)
    state = json.load(open(os.path.join(whole, "checkpoints", f"step_{steps:06d}", "trainer.json")))
    losses = {k: v["value"] for k, v in state["losses"].items()}
    return {"type": kind, "val": losses["val/loss"], "val_ema": losses.get("val/loss_ema"),
            "train": losses["train/loss"], "exact": exact, "logits": export_vs_trainer(whole, steps),
            "seconds": seconds, "class": json.load(open(os.path.join(whole, "export", "config.json")))["architectures"][0]}


def table(rows: list[dict], steps: int) -> str:
    out = [f"| architecture | class | val loss at step {steps} (0: {math.log(4096):.2f}) | fall | resumed at "
           f"{steps // 2} = whole | export vs trainer, max abs logit diff | wall, whole run |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| `{r['type']}` | `{r['class']}` | {r['val']:.3f} | {math.log(4096) - r['val']:.2f} nats | "
                   f"{'bit-exact' if r['exact'] else 'DIFFERS'} | {r['logits']:.1e} | {r['seconds']:.0f} s |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.types.split(","):
            rows.append(measure(kind, args.steps, tmp))
            print(table(rows[-1:], args.steps).splitlines()[-1], flush=True)
    print(table(rows, args.steps))


if __name__ == "__main__":
    main()
