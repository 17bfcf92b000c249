"""The model card (README.md) of an export, from what the checkpoint recorded.

``build_card`` turns ``meta.json`` (resolved config, model args, library versions) and
``trainer.json`` (step, tokens seen, last losses) into a ``huggingface_hub.ModelCard``:
architecture and parameter count, tokens trained, data, curriculum, optimizer and muP
settings, EMA settings, final losses, versions and how to load it. Its YAML header carries a
``scaleout`` block (step, tokens, weights) that says which checkpoint the folder came from.

    >>> text = build_card(meta, trainer_state, model_config, "ema", n_params)
    >>> ModelCard(text).save("export/README.md")

No environment value reaches the card: it is built from the recorded config only, and any
token-like environment variable found in the text anyway is masked.
"""

from __future__ import annotations

import math
import os

SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
LOSS_NAMES = {"train/loss": "train loss", "val/loss": "validation loss (raw weights)",
              "val/loss_ema": "validation loss (EMA weights)"}


def build_card(meta: dict, trainer_state: dict, model_config, weights: str, n_params: int,
               source: str | None = None, load_id: str = "PATH_OR_REPO_ID", n_active: int | None = None) -> str:
    """The card's full text (YAML header + markdown); ``n_active``: a mixture of experts' parameters
    per token (``models.active_params``)."""
    from huggingface_hub import ModelCardData

    cfg = meta.get("config", {})
    data = cfg.get("data", {})
    step, tokens = trainer_state.get("step"), trainer_state.get("tokens_seen")
    hub_data = [data["source"]] if _is_hub_id(data.get("source", "")) else None
    card_data = ModelCardData(library_name="transformers", pipeline_tag="text-generation", datasets=hub_data,
                              tags=["scaleout", model_config.model_type, "muon" if _optim(cfg) == "muon" else "adamw"]
                              + (["mup"] if cfg.get("mup", {}).get("enabled") else []),
                              scaleout={"step": step, "tokens_seen": tokens, "weights": weights})
    arch = _architecture_name(model_config)
    sections = [
        f"# {arch} · {_human(n_params)} parameters · {_human(tokens)} tokens\n\n"
        f"A decoder language model pretrained with scaleout (step {step}, {weights} weights). It loads with "
        "plain transformers, no custom code.",
        _architecture(model_config, arch, n_params, n_active),
        _training(cfg, meta, step, tokens),
        _curriculum(data.get("curriculum")),
        _optimizer(cfg, model_config),
        _ema(cfg.get("ema", {}), weights),
        _losses(trainer_state.get("losses", {})),
        _versions(meta.get("versions", {})),
        _how_to_load(load_id),
    ]
    if source:
        sections.append(f"Exported from checkpoint `{os.path.basename(os.path.normpath(source))}`.")
    text = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"
    return _mask_secrets(text)


def card_origin(folder: str) -> dict | None:
    """The ``scaleout`` block of ``folder/README.md`` (step, tokens_seen, weights), or None."""
    from huggingface_hub import ModelCard

    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return None
    try:
        origin = ModelCard.load(path).data.to_dict().get("scaleout")
    except Exception:  # not a card at all
        return None
    return origin if isinstance(origin, dict) else None


def _architecture_name(model_config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(model_config, "architectures", None):
        return model_config.architectures[0]
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_config.model_type, model_config.model_type)


def _table(rows: list[tuple]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _architecture(mc, arch: str, n_params: int, n_active: int | None = None) -> str:
    experts = getattr(mc, "num_local_experts", None) or getattr(mc, "num_experts", None) \
        or getattr(mc, "n_routed_experts", None)
    moe = [("active parameters per token", f"{n_active:,}" if n_active else "?"),
           ("experts (routed, per token, shared)",
            f"{experts}, {mc.num_experts_per_tok}, {getattr(mc, 'n_shared_experts', None) or 0}"),
           ("expert MLP size", getattr(mc, "moe_intermediate_size", None) or mc.intermediate_size)] if experts else []
    rows = [("architecture", f"`{arch}` ({mc.model_type})"), ("parameters", f"{n_params:,}"), *moe,
            ("layers", mc.num_hidden_layers), ("hidden size", mc.hidden_size),
            ("MLP size", getattr(mc, "intermediate_size", "?")), ("attention heads", mc.num_attention_heads),
            ("key/value heads", getattr(mc, "num_key_value_heads", mc.num_attention_heads)),
            ("vocabulary", mc.vocab_size), ("max positions", mc.max_position_embeddings),
            ("tied embeddings", getattr(mc, "tie_word_embeddings", False))]
    return "## Architecture\n\n" + _table(rows)


def _training(cfg: dict, meta: dict, step, tokens) -> str:
    data, train = cfg.get("data", {}), cfg.get("train", {})
    source = data.get("source")
    if source == "stdlib":
        source = "`stdlib`: the Python standard library's sources (site-packages and tests excluded)"
    else:
        source = f"`{source}` (split `{data.get('split')}`, field `{data.get('text_field')}`)"
    held = data.get("val_every")
    rows = [("steps", step), ("tokens trained", f"{tokens:,}" if isinstance(tokens, int) else tokens),
            ("data", source), ("tokenizer", f"`{data.get('tokenizer')}`"),
            ("validation", f"1 document in {held} held out" if held else "none"),
            ("tokens per step", train.get("tokens_per_step")), ("gradient accumulation", train.get("grad_accum")),
            ("processes", meta.get("world_size")), ("precision", train.get("precision")),
            ("ZeRO (DeepSpeed config)", cfg.get("dist", {}).get("deepspeed_config") or "none")]
    return "## Training\n\n" + _table(rows)


def _curriculum(spec: str | None) -> str:
    if not spec:
        return ""
    from trainer.config.curriculum import parse_curriculum

    rows, start = [], 0
    for phase in parse_curriculum(spec):
        end = "end" if phase.until == math.inf else _human(phase.until)
        rows.append(f"| {phase.index} | {phase.seq_len} | {_human(start)} | {end} |")
        start = phase.until
    return ("## Sequence-length curriculum\n\n"
            f"`{spec}`: sequence length by tokens seen (tokens per step constant).\n\n"
            "| phase | seq len | from tokens | until |\n|---|---|---|---|\n" + "\n".join(rows))


def _optim(cfg: dict) -> str | None:
    return cfg.get("optim", {}).get("name")


def _optimizer(cfg: dict, mc) -> str:
    o, t, m = cfg.get("optim", {}), cfg.get("train", {}), cfg.get("mup", {})
    rows = [("optimizer", o.get("name"))]
    if o.get("name") == "muon":
        rows += [("Muon lr (hidden matrices)", o.get("lr")), ("Muon momentum / Nesterov",
                                                              f"{o.get('momentum')} / {o.get('nesterov')}"),
                 ("Muon update scale", o.get("scale")), ("Muon weight decay", o.get("weight_decay")),
                 ("Newton-Schulz steps", o.get("ns_steps"))]
    rows += [("AdamW lr", o.get("adamw_lr")), ("AdamW betas / eps", f"{o.get('adamw_betas')} / {o.get('adamw_eps')}"),
             ("AdamW weight decay", o.get("adamw_weight_decay")),
             ("schedule", f"{t.get('schedule')}, warmup {t.get('warmup_steps')} steps, min lr ratio "
                          f"{t.get('min_lr_ratio')}" + (f", decay fraction {t.get('decay_frac')}"
                                                         if t.get("schedule") == "wsd" else "")),
             ("gradient clipping", t.get("grad_clip"))]
    if m.get("enabled"):
        width = mc.hidden_size / m["base_width"] if m.get("base_width") else "?"
        rows += [("muP", f"on: base width {m.get('base_width')}, width multiplier {width}"),
                 ("muP forward multipliers (in config.json)",
                  f"embedding {mc.embedding_multiplier}, attention {mc.attention_multiplier:g}, residual "
                  f"{mc.residual_multiplier}, logits scaling {mc.logits_scaling}")
                 if hasattr(mc, "logits_scaling") else ("muP forward multipliers", "n/a")]
    else:
        rows.append(("muP", "off (standard parametrization)"))
    return "## Optimizer and muP\n\n" + _table(rows)


def _ema(e: dict, weights: str) -> str:
    if not e.get("enabled"):
        return f"## EMA\n\nNo EMA was kept; these are the raw weights ({weights})."
    rows = [("exported weights", "EMA" if weights == "ema" else "raw (the EMA was not exported)"),
            ("decay", e.get("decay")), ("update every", f"{e.get('every')} step(s)"),
            ("warmup", e.get("warmup")), ("start step", e.get("start_step"))]
    return "## EMA\n\n" + _table(rows)


def _losses(losses: dict) -> str:
    rows = [(LOSS_NAMES.get(k, k), f"{v['value']:.4f} (step {v['step']})") for k, v in sorted(losses.items())
            if isinstance(v, dict) and "value" in v]
    return "## Final losses\n\n" + (_table(rows) if rows else "Not recorded by this checkpoint.")


def _versions(versions: dict) -> str:
    rows = [(k, v) for k, v in versions.items() if v]
    return "## Library versions (training)\n\n" + _table(rows) if rows else ""


def _how_to_load(load_id: str) -> str:
    return ("## How to load\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{load_id}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{load_id}")\n'
            'generate = pipeline("text-generation", model=model, tokenizer=tokenizer)\n'
            'print(generate("def main():", max_new_tokens=40)[0]["generated_text"])\n```\n\n'
            f'or `scaleout generate {load_id} --prompt "def main():"`; loss on a data source: '
            f"`scaleout eval {load_id} --data.source FILES`.")


def _is_hub_id(source: str) -> bool:
    return (source.count("/") == 1 and not os.path.exists(source) and not source.startswith((".", "/", "~"))
            and not any(c in source for c in "*?[") and source != "stdlib")


def _human(n) -> str:
    if not isinstance(n, (int, float)) or n != n:
        return str(n)
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def _mask_secrets(text: str) -> str:
    for key in SECRET_ENV:
        value = os.environ.get(key)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return text
