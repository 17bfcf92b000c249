"""The run config's sections: one dataclass per concern (the data, optim, muP, EMA and Hub sections have
modules of their own beside this one).

Loading them from a recipe and overrides: ``trainer/config/load.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

from trainer.config.base import (
    ConfigError,
    doc,
    to_dict,
)
from trainer.config.data import DataConfig
from trainer.config.deepspeed import check_deepspeed_config
from trainer.config.ema import EmaConfig
from trainer.config.hub import HubConfig
from trainer.config.mup import MupConfig
from trainer.config.optim import OptimConfig


@dataclass
class ModelConfig:
    type: str | None = doc("transformers class: granite (Llama-style + muP multipliers), granite_swa (with "
                           "sliding-window layers and attention sinks), llama or qwen3 (no muP multipliers: "
                           "mup.enabled false); mixtures of experts: granitemoe and granitemoe_swa (with muP "
                           "multipliers), qwen3_moe, deepseek_v3 (multi-head latent attention, shared experts); "
                           "null: granite, or init.from's", None)
    sliding_window: int | None = doc("granite_swa, granitemoe_swa: tokens each sliding-window layer attends to "
                                     "(null: the class's default, 128)", None)
    config: str | None = doc("any transformers causal LM: its config.json (a file, a folder holding one, or a Hub "
                             "id) gives the class and the architecture (model.type, model.preset and the sizes "
                             "must stay unset); the vocabulary is the tokenizer's", None)
    preset: str = doc("model preset: tiny, small, 125m, 350m, 1b (see models/presets.py); every size fits every "
                      "model.type", "tiny")
    d_model: int | None = doc("override the preset's hidden width", None)
    n_layers: int | None = doc("override the preset's number of blocks", None)
    n_heads: int | None = doc("override the preset's attention heads", None)
    n_kv_heads: int | None = doc("override the preset's key/value heads (GQA)", None)
    d_ff: int | None = doc("override the preset's MLP width", None)
    max_seq_len: int | None = doc("override the preset's max positions", None)
    tie_embeddings: bool | None = doc("override whether the readout shares the embedding matrix", None)
    experts: int | None = doc("MoE types: routed experts per MoE layer (null: 8)", None)
    experts_per_token: int | None = doc("MoE types: experts each token is routed to, top-k (null: 2)", None)
    shared_experts: int | None = doc("deepseek_v3, granitemoe_swa: always-on shared experts beside the routed "
                                     "ones (null: 1)", None)
    expert_d_ff: int | None = doc("MoE types: each expert's MLP width (null: the preset's d_ff / "
                                  "experts_per_token, so a token's MLP FLOPs match the dense preset)", None)
    aux_loss_coef: float = doc("granitemoe(_swa), qwen3_moe: coefficient of the class's load-balancing loss added "
                               "to the language-model loss (0: off); logged apart as train/aux_loss", 0.01)
    bias_update_speed: float = doc("deepseek_v3: gamma of the auxiliary-loss-free balancing (DeepSeek-V3 "
                                   "sec. 2.1.2): after each step every router's expert bias moves by gamma "
                                   "towards balance (0: off)", 0.001)
    pad_vocab_multiple: int = doc("round the model's vocabulary up to a multiple of this (fast GPU GEMMs; "
                                  "the extra rows are never targets); 1: the tokenizer's size", 128)

    def arch(self) -> dict:
        """The architecture numbers: the preset with this section's overrides (models/presets.py)."""
        from models.presets import resolve_preset

        return resolve_preset(self.preset, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                              n_kv_heads=self.n_kv_heads, d_ff=self.d_ff, max_seq_len=self.max_seq_len,
                              tie_embeddings=self.tie_embeddings)

    def moe(self) -> dict:
        """The MoE numbers for a MoE ``model.type`` ({} for a dense one): models/presets.py ``resolve_moe``."""
        from models.presets import resolve_moe

        return resolve_moe(self.model_type, self.arch(), experts=self.experts, experts_per_token=self.experts_per_token,
                           shared_experts=self.shared_experts, expert_d_ff=self.expert_d_ff)

    @property
    def model_type(self) -> str:
        return self.type or "granite"

    def validate(self) -> None:
        # Sizes only: the preset's numbers (and so divisibility) are checked by preflight's build_arch,
        # which keeps loading a config free of the models package (torch/transformers imports).
        from models.presets import SWA_TYPES, TYPES

        if self.config is not None and not self.config.strip():
            raise ConfigError("model.config must not be empty; give a config.json, its folder or a Hub id, or null")
        if self.type is not None and self.type not in TYPES:
            raise ConfigError(f"model.type {self.type!r} is unknown; choose one of {', '.join(TYPES)}")
        if self.sliding_window is not None and (self.sliding_window < 1 or self.model_type not in SWA_TYPES):
            raise ConfigError(f"model.sliding_window must be >= 1 and needs model.type {' or '.join(SWA_TYPES)}, got "
                              f"{self.sliding_window} with model.type {self.model_type}")
        if self.model_type == "deepseek_v3" and self.n_kv_heads is not None:
            raise ConfigError("model.n_kv_heads: deepseek_v3's latent attention has no key/value head count of its own "
                              "(keys and values come from one shared latent per token); leave it unset")
        if self.aux_loss_coef < 0 or self.bias_update_speed < 0:
            key = "aux_loss_coef" if self.aux_loss_coef < 0 else "bias_update_speed"
            raise ConfigError(f"model.{key} must be >= 0 (0: off), got {getattr(self, key)}")
        for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len", "experts",
                    "experts_per_token", "expert_d_ff"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.pad_vocab_multiple < 1:
            raise ConfigError(f"model.pad_vocab_multiple must be >= 1 (1: no padding), got {self.pad_vocab_multiple}")


@dataclass
class InitConfig:
    """``init.from``: start from a transformers model instead of a fresh init (trainer/hf/init_from.py).

        >>> load_config("configs/tiny.yaml", ["--init.from", "runs/tiny/export"]).init.from_
        'runs/tiny/export'
    """

    from_: str | None = doc("start from this transformers model: a local folder (our runs/NAME/export, a Granite "
                            "or Llama folder), a checkpoint (runs/NAME/checkpoints/step_N: its fp32 master "
                            "weights) or a Hub id (from the local cache when offline). Its weights, "
                            "architecture and tokenizer replace model.preset and data.tokenizer (explicit "
                            "model.* values must agree), its vocabulary size is kept; optimizer state starts "
                            "fresh at step 0; muP settings must match its multipliers", None)

    def validate(self) -> None:
        if self.from_ is not None and not self.from_.strip():
            raise ConfigError("init.from must not be empty; give a model folder or Hub id, or null")


@dataclass
class TrainConfig:
    seed: int = doc("global seed (model init, data order)", 0)
    steps: int | None = doc("optimizer steps to run (one of steps/tokens)", None)
    tokens: str | None = doc("tokens to train on, with K/M/B/T suffix, e.g. 2B (one of steps/tokens)", None)
    tokens_per_step: int = doc("global tokens per optimizer step (constant across curriculum phases)", 8192)
    grad_accum: int = doc("micro-batches accumulated per optimizer step", 1)
    grad_clip: float = doc("max global gradient norm (0 disables clipping)", 1.0)
    precision: str = doc("auto (bf16 on a GPU that has it, else fp16 on a GPU; fp32 on CPU), fp32, bf16 or fp16 "
                         "(dynamic loss scaling: DeepSpeed's under ZeRO, torch.amp.GradScaler without it)", "auto")
    schedule: str = doc("LR schedule: cosine, wsd (warmup-stable-decay) or constant (after warmup)", "cosine")
    warmup_steps: int = doc("linear warmup steps", 10)
    decay_frac: float = doc("fraction of the run spent decaying (wsd only)", 0.2)
    min_lr_ratio: float = doc("final lr as a fraction of each group's base lr", 0.1)
    eval_every: int = doc("validate every N steps (0: only at the end)", 50)
    eval_batches: int = doc("validation micro-batches per evaluation", 8)
    out_dir: str = doc("run directory: checkpoints, exported model, logs", "runs/tiny")
    stop_at_step: int | None = doc("end this invocation after this step with a checkpoint (to fit a job's "
                                   "time limit); the next invocation resumes", None)
    max_skipped: int = doc("stop the run (exit code 3, no new checkpoint) after this many consecutive steps "
                           "skipped for a non-finite loss or gradient", 10)
    spike_factor: float = doc("warn once when the loss stays above spike_factor x its running mean for "
                                "train.spike_steps consecutive steps", 3.0)
    spike_steps: int = doc("consecutive steps above the spike threshold before the warning (0: off)", 5)
    activation_checkpointing: bool = doc("recompute each block's activations in the backward pass (less memory, "
                                         "~1/3 more compute)", False)
    compile: bool | str = doc("compile the model (torch.compile / DeepSpeed engine.compile, static shapes; each "
                              "curriculum phase recompiles once): auto (on with CUDA), true or false", "auto")

    def validate(self) -> None:
        if (self.steps is None) == (self.tokens is None):
            raise ConfigError("set exactly one of train.steps and train.tokens (e.g. --train.steps 200)")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"train.steps must be >= 1, got {self.steps}")
        if self.tokens is not None:
            from trainer.config.curriculum import parse_tokens

            if not 0 < parse_tokens(self.tokens, "train.tokens") < float("inf"):
                raise ConfigError(f"train.tokens must be a positive, finite count, got {self.tokens!r}; write e.g. 2B")
        for key in ("seed", "warmup_steps", "eval_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.eval_batches < 1:
            raise ConfigError(f"train.eval_batches must be >= 1, got {self.eval_batches} "
                              "(data.val_every 0 disables validation)")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ConfigError(f"train.stop_at_step must be >= 1 or null, got {self.stop_at_step}")
        if self.compile not in ("auto", True, False):
            raise ConfigError(f"train.compile must be auto, true or false, got {self.compile!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ConfigError(f"train.schedule must be cosine, wsd or constant, got {self.schedule!r}")
        for key in ("grad_accum", "tokens_per_step"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("min_lr_ratio", "decay_frac"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"train.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.max_skipped < 1:
            raise ConfigError(f"train.max_skipped must be >= 1, got {self.max_skipped}")
        if self.spike_factor <= 1 or self.spike_steps < 0:
            raise ConfigError(f"train.spike_factor must be > 1 and train.spike_steps >= 0, got "
                              f"{self.spike_factor}, {self.spike_steps}")
        _check_writable_dir(self.out_dir, "train.out_dir")


def _check_writable_dir(path: str, key: str) -> None:
    """``path`` is (or can be created as) a directory this user may write."""
    if not path:
        raise ConfigError(f"{key} must not be empty; give a run directory such as runs/tiny")
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{key}: '{path}' exists and is not a directory; choose another {key}")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{key}: '{parent}' is a file, so '{path}' cannot be created; choose another {key}")
    try:  # os.access says yes to root even on a read-only mount: try it
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise ConfigError(f"{key}: '{parent}' is not writable ({e.strerror}); choose a writable directory") from None


@dataclass
class DistConfig:
    deepspeed_config: str | None = doc("DeepSpeed JSON (ds_configs/zero1.json, zero2.json, ...); "
                                       "null runs plain DDP / single process", "ds_configs/zero2.json")

    def validate(self) -> None:
        path, fix = self.deepspeed_config, "use one of ds_configs/*.json or null"
        if not path:
            return
        if not os.path.exists(path):
            raise ConfigError(f"dist.deepspeed_config: file '{path}' not found; {fix}")
        if not os.path.isfile(path):
            raise ConfigError(f"dist.deepspeed_config: '{path}' is a directory, not a JSON file; {fix}")
        try:
            with open(path, encoding="utf-8") as f:
                tree = json.load(f)
        except (ValueError, OSError) as e:  # JSONDecodeError carries the line
            raise ConfigError(f"dist.deepspeed_config: '{path}' is not valid JSON ({e}); {fix}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"dist.deepspeed_config: '{path}' must hold a JSON object; {fix}")
        check_deepspeed_config(tree, path)  # ZeRO-1/2 and the keys the trainer honours or fills


@dataclass
class CheckpointConfig:
    every: int = doc("save a checkpoint every N optimizer steps (0: only at the end)", 100)
    keep: int = doc("checkpoints kept on disk (oldest deleted first)", 2)
    resume: str | None = doc("'auto' (latest in out_dir/checkpoints if any), a checkpoint dir, or null", "auto")

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError(f"checkpoint.every must be >= 0 (0: only at the end), got {self.every}")
        if self.keep < 1:
            raise ConfigError(f"checkpoint.keep must be >= 1, got {self.keep}")
        if self.resume == "":
            raise ConfigError("checkpoint.resume must be auto, a checkpoint directory or null, got ''")


@dataclass
class ExportConfig:
    weights: str = doc("weights the exported model gets: ema, raw, or auto (ema when ema.enabled)", "auto")

    def validate(self) -> None:
        if self.weights not in ("auto", "ema", "raw"):
            raise ConfigError(f"export.weights must be auto, ema or raw, got {self.weights!r}")


@dataclass
class LogConfig:
    trackers: list[str] = doc("accelerate trackers, e.g. [wandb] (WANDB_MODE=offline works without network)",
                              default_factory=list)
    project: str = doc("tracker project name", "scaleout")
    every: int = doc("log metrics every N optimizer steps", 1)
    progress: bool = doc("show a progress bar on the main process", True)

    def validate(self) -> None:
        if self.every < 1:
            raise ConfigError(f"log.every must be >= 1, got {self.every}")
        if not self.project:
            raise ConfigError("log.project must not be empty")
        # The tracker names are accelerate's: checked by trainer.run.tracking.check_trackers (preflight).


@dataclass
class Config:
    model: ModelConfig = doc("model", default_factory=ModelConfig)
    init: InitConfig = doc("start from a pretrained model", default_factory=InitConfig)
    data: DataConfig = doc("data", default_factory=DataConfig)
    optim: OptimConfig = doc("optimizer", default_factory=OptimConfig)
    mup: MupConfig = doc("muP", default_factory=MupConfig)
    train: TrainConfig = doc("training loop", default_factory=lambda: TrainConfig(steps=100))
    dist: DistConfig = doc("distributed", default_factory=DistConfig)
    checkpoint: CheckpointConfig = doc("checkpointing", default_factory=CheckpointConfig)
    ema: EmaConfig = doc("EMA of the weights", default_factory=EmaConfig)
    export: ExportConfig = doc("export", default_factory=ExportConfig)
    hub: HubConfig = doc("push to the Hugging Face Hub", default_factory=HubConfig)
    log: LogConfig = doc("logging", default_factory=LogConfig)

    def to_dict(self) -> dict:
        return to_dict(self)

    def validate(self) -> None:
        if self.export.weights == "ema" and not self.ema.enabled:
            raise ConfigError("export.weights is 'ema' but ema.enabled is false; set --ema.enabled true or "
                              "--export.weights raw")
