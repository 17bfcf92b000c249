"""Mixture-of-experts bookkeeping around the step: the language-model loss apart from the balancing
loss, the expert load, and deepseek_v3's auxiliary-loss-free balancing.

* Loss. granitemoe and qwen3_moe add ``router_aux_loss_coef * aux_loss`` to ``.loss`` (their
  load-balancing loss, Switch Transformer's); the step backpropagates that sum, and the trainer
  logs and validates the language-model loss alone (``lm_loss``).
* Load. A forward hook on every router (``models.moe``) counts, per MoE layer, the tokens sent to
  each expert during the step's training forwards (not evaluation, not an activation-checkpoint
  recompute inside backward); at the step's end the counts are summed over the data-parallel ranks.
  Logged: ``train/expert_load_max``, the most loaded expert over the mean, worst layer (1 is
  perfect balance, E/k is every token to the same experts).
* Bias (DeepSeek-V3, arXiv 2412.19437, sec. 2.1.2). deepseek_v3 routes on ``sigmoid score +
  e_score_correction_bias`` (the bias only picks experts, it does not weight them) and
  transformers never updates it. After each applied step, every router's bias moves by
  ``model.bias_update_speed`` (gamma) towards balance: ``b_e += gamma * sign(mean load - load_e)``.
  The counts are global, so every rank computes the same bias; it is a buffer, saved in the
  checkpoints (``trainer/state/checkpoint.py``) and written to the export.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from models.moe import BIAS, moe_blocks


class ExpertLoad:
    """The routers' token counts over a step, the load metric, and the bias update."""

    def __init__(self, model: torch.nn.Module, bias_speed: float):
        self.blocks = moe_blocks(model)
        self.bias_speed = bias_speed
        self.counts = [torch.zeros(b.n_experts, dtype=torch.float64) for b in self.blocks]
        self.hooks = [b.router.register_forward_hook(self._hook(i)) for i, b in enumerate(self.blocks)]

    def _hook(self, i: int):
        def count(module, args, out):
            inside_backward = torch._C._current_graph_task_id() != -1  # activation-checkpoint recompute
            if module.training and not inside_backward:
                top_k_index = out[2]
                self.counts[i] += torch.bincount(top_k_index.reshape(-1).cpu(), minlength=len(self.counts[i]))
        return count

    def step(self, applied: bool, device) -> dict:
        """After a step: the global counts' load metric; with ``applied`` (the step was not skipped)
        the bias update. Collective under data parallelism (every rank calls it every step)."""
        if not self.blocks:
            return {}
        counts = torch.stack(self.counts).to(device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            counts = counts.float()  # gloo reduces no float64 on some builds; counts are exact below 2^24
            dist.all_reduce(counts)
        counts = counts.double().cpu()
        for c in self.counts:
            c.zero_()
        mean = counts.mean(dim=1, keepdim=True).clamp(min=1e-12)
        if applied and self.bias_speed:
            for block, load, m in zip(self.blocks, counts, mean):
                bias = getattr(block.router, BIAS, None)
                if bias is not None:
                    bias.add_(torch.sign(m - load).to(bias.dtype).to(bias.device), alpha=self.bias_speed)
        return {"train/expert_load_max": (counts.max(dim=1).values / mean.squeeze(1)).max().item()}

    def close(self) -> None:
        for h in self.hooks:
            h.remove()

