"""What a ``dist.deepspeed_config`` JSON may hold: the settings the trainer honours, and the ones it
fills itself from the recipe (written ``"auto"``). Anything else is refused when the config loads.

Why an allow-list: DeepSpeed reads hundreds of keys, and most of them either fight the trainer or are
silently overwritten by it. ZeRO-3 trained, then crashed in the final validation (issue 17: the EMA and
the checkpoint's fragment map assume ZeRO-1/2 flat partitions); an ``optimizer``/``scheduler`` block
replaces Muon, the muP groups and ``train.schedule``; parameter offload is ZeRO-3's; optimizer offload
moves the fp32 partitions to the CPU, where Muon's all-reduce (trainer/optim/muon.py) cannot run under
NCCL. ``trainer/run/dist.py`` fills the "auto" keys. Pure: imports nothing of DeepSpeed.

    check_deepspeed_config(json.load(open(path)), path)   # DistConfig.validate; ConfigError names the key
"""

from __future__ import annotations

from trainer.config.base import ConfigError

# Top-level keys trainer/run/dist.py overwrites, with the recipe keys that set them.
FILLED = {
    "train_micro_batch_size_per_gpu": "train.tokens_per_step, train.grad_accum and data.curriculum",
    "gradient_accumulation_steps": "train.grad_accum",
    "train_batch_size": "train.tokens_per_step",
    "gradient_clipping": "train.grad_clip",
}
# ZeRO-1/2 knobs that change where and how gradients are reduced, never the numbers.
ZERO_FLAGS = ("contiguous_gradients", "overlap_comm", "reduce_scatter")
ZERO_SIZES = ("reduce_bucket_size", "allgather_bucket_size")
FLAGS = ("zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "wall_clock_breakdown")
_REFUSED = {  # keys with a reason of their own
    "optimizer": "DeepSpeed's optimizer would replace the trainer's (optim.*, muP groups); remove the block and "
                 "set optim.*",
    "scheduler": "DeepSpeed's scheduler would replace train.schedule; remove the block and set train.schedule, "
                 "train.warmup_steps",
    "zero_optimization.offload_param": "parameter offload is ZeRO-3's, which is not supported; remove it",
    "zero_optimization.offload_optimizer": "optimizer offload moves the fp32 partitions to the CPU, where the "
                                           "trainer's Muon cannot all-reduce them; remove it (ZeRO-2 shards the "
                                           "optimizer state across the processes)",
    "fp16": "the trainer sets mixed precision and the loss scaler from train.precision (fp32, bf16 or fp16); "
            "remove the block",
}


def check_deepspeed_config(tree: dict, path: str) -> None:
    """Refuse, with one line naming the key and the fix, what the trainer would not honour."""
    where = f"dist.deepspeed_config: '{path}'"
    for key, value in tree.items():
        if key in FILLED:
            if value != "auto":
                raise ConfigError(f"{where} sets {key} to {value!r}, which the trainer overwrites from "
                                  f"{FILLED[key]}; write \"auto\" and set {FILLED[key]} in the recipe")
        elif key == "zero_optimization":
            _check_zero(value, where)
        elif key == "bf16":
            if value != {"enabled": "auto"}:
                raise ConfigError(f"{where} sets bf16 to {value!r}; the trainer sets it from train.precision: write "
                                  "{\"enabled\": \"auto\"} and set train.precision (auto, fp32 or bf16)")
        elif key == "fp16" and isinstance(value, dict) and value.get("enabled", False) in (False, "auto") \
                and set(value) <= {"enabled"}:
            continue  # dropped by trainer/run/dist.py: fp16 off is what the trainer does anyway
        elif key in FLAGS:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
            if key == "zero_allow_untested_optimizer" and not value:
                raise ConfigError(f"{where} sets zero_allow_untested_optimizer false, but the optimizer is always "
                                  "the trainer's own (Muon/AdamW); set it true or remove it")
        elif key in _REFUSED:
            raise ConfigError(f"{where} has {key!r}; {_REFUSED[key]}")
        else:
            raise ConfigError(f"{where} sets {key!r}, which the trainer does not honour; remove it (allowed: "
                              f"{', '.join(sorted({*FILLED, *FLAGS, 'zero_optimization', 'bf16'}))})")
    if "zero_optimization" not in tree:
        _check_zero({}, where)


def _check_zero(zero, where: str) -> None:
    if not isinstance(zero, dict):
        raise ConfigError(f"{where}: zero_optimization must be a JSON object, got {zero!r}; e.g. {{\"stage\": 2}}")
    stage = zero.get("stage")
    if stage not in (1, 2) or isinstance(stage, bool):
        what = "has no zero_optimization.stage (DeepSpeed's default 0)" if stage is None else \
            f"has zero_optimization.stage {stage!r}"
        later = " (ZeRO-3 is not supported yet)" if stage == 3 else ""
        raise ConfigError(f"{where} {what}, which the trainer does not support{later}; set the stage to 1 or 2 "
                          "(ds_configs/zero1.json, zero2.json), or dist.deepspeed_config null for plain DDP")
    for key, value in zero.items():
        if f"zero_optimization.{key}" in _REFUSED:
            raise ConfigError(f"{where} has zero_optimization.{key}; {_REFUSED[f'zero_optimization.{key}']}")
        if key in ZERO_FLAGS and not isinstance(value, bool):
            raise ConfigError(f"{where}: zero_optimization.{key} must be true or false, got {value!r}")
        if key in ZERO_SIZES and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1):
            raise ConfigError(f"{where}: zero_optimization.{key} must be a positive number, got {value!r}")
        if key not in ("stage", *ZERO_FLAGS, *ZERO_SIZES):
            raise ConfigError(f"{where} sets zero_optimization.{key}, which the trainer does not honour; remove it "
                              f"(allowed: stage, {', '.join(ZERO_FLAGS + ZERO_SIZES)})")
