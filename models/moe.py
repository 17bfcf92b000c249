"""Mixture-of-experts blocks found from a model's structure, for any transformers class.

A MoE block is a module with two children: an *experts* module whose parameters are 3-D stacks
(E, ., .), one matrix per expert, and a *router*, a leaf module whose 2-D ``weight`` has one row
per expert (E, d_model) and whose forward returns ``(router_logits, top_k_weights, top_k_index)``
(transformers 5's granitemoe, qwen3_moe and deepseek_v3 routers all do). Nothing here knows about
training; the trainer's MoE bookkeeping (``trainer/run/moe.py``) and the optimizer's split of
expert stacks (``trainer/optim/matrices.py``) read this.

    >>> [(b.name, b.n_experts, b.top_k) for b in moe_blocks(model)]
    [('model.layers.0.mlp', 8, 2), ...]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BIAS = "e_score_correction_bias"  # deepseek_v3's router bias: a buffer that training changes


@dataclass
class MoeBlock:
    name: str  # the block's module name
    router_name: str
    router: torch.nn.Module
    experts: torch.nn.Module
    n_experts: int
    top_k: int


def _stacks(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters(recurse=False) if p.ndim == 3]


def moe_blocks(model: torch.nn.Module) -> list[MoeBlock]:
    """Every MoE block of ``model``, in module order."""
    blocks = []
    for name, parent in model.named_modules():
        children = list(parent.named_children())
        experts = [m for _, m in children if _stacks(m)]
        if len(experts) != 1:
            continue
        n_experts = _stacks(experts[0])[0].shape[0]
        routers = [(n, m) for n, m in children if m is not experts[0] and not list(m.children())
                   and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim == 2
                   and m.weight.shape[0] == n_experts]
        if len(routers) != 1:
            raise ValueError(f"{name}: an expert stack without exactly one router (found {len(routers)})")
        (router_name, router), = routers
        top_k = getattr(router, "top_k", None) or model.config.num_experts_per_tok
        blocks.append(MoeBlock(name, f"{name}.{router_name}" if name else router_name, router, experts[0],
                               n_experts, int(top_k)))
    return blocks


def router_params(model: torch.nn.Module) -> set[str]:
    """Names of the routers' weights (the muP class 'router')."""
    return {f"{b.router_name}.weight" for b in moe_blocks(model)}


def trained_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The buffers training changes (deepseek_v3's expert biases), by name: what checkpoints keep."""
    return {n: b for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] == BIAS}


def aux_loss_coef(config) -> float:
    """The coefficient of the balancing loss a class adds to ``.loss`` (granitemoe(_swa), qwen3_moe with
    ``output_router_logits``); 0 for every other class."""
    return getattr(config, "router_aux_loss_coef", 0.0) if getattr(config, "output_router_logits", False) else 0.0


def lm_loss(out, coef: float) -> torch.Tensor:
    """The language-model loss of a forward's output: ``.loss`` less the balancing loss the class
    added to it (``aux_loss`` is set only when the class computed one)."""
    aux = getattr(out, "aux_loss", None)
    return out.loss if aux is None or not coef else out.loss - coef * aux.to(out.loss.device)
