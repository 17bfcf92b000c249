"""Every check of ``scaleout train`` that can fail on user input, run before any worker starts:
the accelerate config, the model's shape, the curriculum, the data sources (opened and read), an
``init.from`` model and the checkpoint to resume. It uses every layer below, so it sits in ``cli/``."""

from __future__ import annotations

import os
import sys

from trainer.config.base import ConfigError, load_yaml_file


def launch_world_size(accel_yaml: str | None, num_processes: int | None) -> int:
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
    if accel_yaml:
        n = check_accelerate_config(accel_yaml)
        return num_processes or n
    return num_processes or int(os.environ.get("WORLD_SIZE", "1"))


def check_accelerate_config(path: str) -> int:
    """Read ``--accelerate-config`` the way ``accelerate launch`` will; returns its num_processes."""
    from accelerate.commands.config.config_args import ClusterConfig

    fix = "use one of accelerate_configs/*.yaml"
    tree = load_yaml_file(path, "--accelerate-config", fix)
    n = tree.get("num_processes", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--accelerate-config: num_processes in '{path}' must be an integer >= 1, got {n!r}")
    try:
        ClusterConfig.from_yaml_file(path)  # unknown keys, bad enum values: what accelerate itself rejects
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"--accelerate-config: '{path}' is not a valid accelerate config "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {fix}") from None
    return n


def launch_machines(accel_yaml: str | None, num_machines: int | None) -> int:
    """The number of machines of the launch: ``--num-machines``, else the accelerate config's."""
    if num_machines is not None:
        return max(num_machines, 1)
    if not accel_yaml:
        return 1
    n = load_yaml_file(accel_yaml, "--accelerate-config", "use one of accelerate_configs/*.yaml").get("num_machines", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def preflight(cfg, world_size: int, recipe: str | None = None, machines: int = 1) -> None:
    """Every check that can fail on user input, run before any worker starts. ``recipe`` (the
    command's recipe path) goes into the commands that error lines suggest; ``machines`` share the
    ``world_size`` processes (the memory check counts one machine's)."""
    from trainer.cli.memory import check_memory
    from trainer.data import check_source, validate_curriculum
    from trainer.run.tracking import check_trackers
    from trainer.state import checkpoint
    from trainer.state.size import check_checkpoint_space

    check_trackers(cfg.log.trackers)
    check_precision(cfg)
    pin = check_pinned(cfg, recipe)
    tok = None
    if cfg.init.from_:  # the model folder (or Hub id) brings the architecture and the tokenizer
        from models import arch_of
        from trainer.hf.init_from import read_init

        if cfg.model.config:
            raise ConfigError(f"model.config: init.from '{cfg.init.from_}' brings its own architecture; drop one")
        init = read_init(cfg)
        arch, tok = arch_of(init.config), init.tokenizer()
    elif cfg.model.config:  # any causal LM's config.json brings the class and the architecture
        from models import arch_of
        from trainer.hf.config_source import check_model_keys, read_model_config

        check_model_keys(cfg.model)
        config = read_model_config(cfg.model.config)
        check_model_type(cfg, config.model_type)
        arch = arch_of(config)
    else:
        try:
            arch = cfg.model.arch()
            cfg.model.moe()  # expert numbers that cannot fit, or set for a dense class
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if not cfg.model.config:
        check_model_type(cfg)
    head_dim = arch.get("head_dim", arch["d_model"] // arch["n_heads"])
    mla = cfg.model.model_type == "deepseek_v3" and not (cfg.init.from_ or cfg.model.config)
    if head_dim % 2 and not mla:  # rotary embeddings rotate pairs (MLA: only its even RoPE part, models.mla_dims)
        raise ConfigError(f"model.d_model / model.n_heads = {head_dim} must be even (rotary embeddings); change "
                          "model.d_model or model.n_heads")
    check_checkpoint_space(cfg, arch, world_size, len(tok) if tok is not None else None)  # trainer/state/size.py
    check_memory(cfg, arch, world_size, tok, machines)  # a model that cannot fit: trainer/cli/memory.py
    validate_curriculum(cfg.data.curriculum, cfg.train.tokens_per_step, cfg.train.grad_accum, world_size,
                        arch["max_seq_len"])
    check_source(cfg.data, tokenizer=tok)  # opens the source and reads a few records: bad data fails here
    if cfg.data.val_source:
        check_source(cfg.data, "val_source", tokenizer=tok)
    if pin is not None:
        say_source_change(cfg, pin)
    _check_resume(checkpoint.resume_candidates(cfg.checkpoint.resume, cfg.train.out_dir), world_size,
                  cfg.data.partitions)


def _check_resume(candidates: list[str], world_size: int, partitions: int) -> None:
    """A checkpoint resumes at any number of processes that divides its data partitions (saved in
    its config); one in the format before elastic resume does not resume. The newest checkpoint
    whose meta.json reads decides; a damaged one is the workers' to skip."""
    from trainer.data.curriculum import check_partitions
    from trainer.state import checkpoint

    for path in candidates:
        try:
            saved = checkpoint.read_meta(path)
        except (OSError, ValueError):
            continue
        if os.path.isdir(os.path.join(path, "accelerate")) and not os.path.isdir(os.path.join(path, "state")):
            raise ConfigError(f"checkpoint.resume: '{path}' was {checkpoint.OLD_FORMAT}")
        saved_parts = saved.get("config", {}).get("data", {}).get("partitions", partitions)
        if saved_parts != partitions:
            raise ConfigError(f"checkpoint.resume: '{path}' was saved with data.partitions={saved_parts}, the recipe "
                              f"has {partitions}; set --data.partitions {saved_parts}")
        check_partitions(partitions, world_size)
        return
    check_partitions(partitions, world_size)


def check_pinned(cfg, recipe: str | None):
    """A resume keeps what defines the run (``trainer/config/resume.py``): a pinned key given another
    value is one line naming the key, the pinned value and the new one. Returns the pin (None: a
    fresh run)."""
    from trainer.config.resume import conflict_message, pinned_conflicts
    from trainer.state import checkpoint, pinned

    if cfg.checkpoint.resume is None:
        return None
    auto = cfg.checkpoint.resume == "auto"
    candidates = checkpoint.resume_candidates(cfg.checkpoint.resume, cfg.train.out_dir)
    pin = pinned.read_pin(cfg.train.out_dir if auto else None, candidates)
    if pin is None:
        return None
    run = cfg.train.out_dir if auto else os.path.dirname(os.path.dirname(pin.path.rstrip("/")))
    for key, old, new in pinned_conflicts(pin.config, cfg.to_dict()):
        raise ConfigError(conflict_message(key, old, new, run, recipe or "RECIPE", _preset_value(pin.config, key, old)))
    return pin


def _preset_value(config: dict, key: str, value) -> str | None:
    """An unset (None) ``model.*`` override is the preset's value: "4 (model.preset 'tiny')"."""
    from trainer.config.sections import ModelConfig

    if not key.startswith("model.") or value is not None:
        return None
    try:
        arch = ModelConfig(**config["model"]).arch()
    except (TypeError, ValueError, KeyError):
        return None
    field = key.split(".", 1)[1]
    return f"{arch[field]} (model.preset {config['model']['preset']!r})" if field in arch else None


def say_source_change(cfg, pin) -> None:
    """One line when the data source's files changed since the run was pinned; training goes on."""
    from trainer.data.sources import Source
    from trainer.state.pinned import source_change

    change = source_change(pin.source, Source.from_config(cfg.data).fingerprint())
    if change and os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"scaleout train: note: data.source '{cfg.data.source}' changed since the run was pinned "
                         f"({change}); the pinned tokenizer encodes it, and each data partition continues from "
                         "its saved position\n")


def check_model_type(cfg, model_type: str | None = None) -> None:
    """muP needs the forward multipliers in the exported model's config: only Granite's classes carry
    them (``models.MUP_TYPES``); for the others muP is refused rather than folded into the weights.
    ``model_type``: model.config's class (default: model.type)."""
    from models.presets import MUP_TYPES

    model_type = model_type or cfg.model.model_type
    if cfg.mup.enabled and not cfg.init.from_ and model_type not in MUP_TYPES:
        key = f"model.config's class {model_type}" if cfg.model.config else f"model.type {model_type}'s class"
        raise ConfigError(f"mup.enabled: {key} has no muP forward "
                          "multipliers, so the exported model could not compute what the run trains; use model.type "
                          f"{' or '.join(MUP_TYPES)} (the same blocks with them), or --mup.enabled false")
    if cfg.model.model_type in ("granite_swa", "granitemoe_swa") and not cfg.init.from_:
        from trainer.config.curriculum import parse_curriculum

        window, phases = cfg.model.sliding_window or SWA_DEFAULT_WINDOW, parse_curriculum(cfg.data.curriculum)
        if window >= phases[0].seq_len and os.environ.get("RANK", "0") == "0":
            longer = [p.seq_len for p in phases if p.seq_len > window]
            sys.stderr.write(f"scaleout train: note: model.sliding_window {window} >= the first phase's sequence "
                             f"length {phases[0].seq_len}: the sliding-window layers see whole sequences"
                             + (f" until the phase of length {longer[0]}\n" if longer else " in every phase\n"))


SWA_DEFAULT_WINDOW = 128  # GraniteSWAConfig's sliding_window default (transformers 5.23)


def check_precision(cfg) -> None:
    """fp16 under DeepSpeed needs a GPU: DeepSpeed refuses fp16 on a CPU ("Type fp16 is not supported on
    your device"). Without DeepSpeed the trainer's own GradScaler runs anywhere."""
    import torch

    if cfg.train.precision == "fp16" and cfg.dist.deepspeed_config and not torch.cuda.is_available():
        raise ConfigError("train.precision fp16 under DeepSpeed (dist.deepspeed_config) needs a GPU: DeepSpeed "
                          "refuses fp16 on a CPU; use --dist.deepspeed_config null (the trainer's GradScaler, "
                          "one process or DDP) or train.precision bf16 or fp32")
