"""Mixture-of-experts (issue 18, its second part), in one process: how Muon splits expert stacks (one
matrix per expert, gate and up apart) and its parity with torch.optim.Muon applied to every expert slice
as its own parameter; routers classified structurally and sent to AdamW; the language-model loss apart
from the balancing loss; the expert load; deepseek_v3's loss-free bias update. The ZeRO side (an expert
slice cut by a partition boundary, W=2 and W=4) is tests/test_muon_zero.py's ``moe`` runs."""

import pytest
import torch
from torch.optim import _muon as torch_muon

from models import build_model, model_config, resolve_moe, resolve_preset
from models.moe import lm_loss, moe_blocks, router_params, trained_buffers
from trainer.config import Config
from trainer.mup import classify_params
from trainer.optim import ShardedMuon, build_param_groups
from trainer.optim.matrices import param_splits
from trainer.optim.newton_schulz import zeropower_via_newtonschulz5
from trainer.run.moe import ExpertLoad

VOCAB = 96


def tiny_moe(model_type: str, seed: int = 0, **moe):
    arch = resolve_preset("tiny", d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=96)
    return build_model(model_config(model_type, arch, VOCAB, moe=resolve_moe(model_type, arch, **moe)), seed=seed)


@pytest.mark.parametrize("model_type", ["granitemoe", "granitemoe_swa", "qwen3_moe", "deepseek_v3"])
def test_expert_stacks_split_per_expert_with_gate_and_up_apart_and_routers_go_to_adamw(model_type):
    model = tiny_moe(model_type, experts=4, experts_per_token=2)
    classes = classify_params(model)
    routers = router_params(model)
    assert routers and all(classes[n] == "router" for n in routers)
    splits = param_splits(model, [n for n, c in classes.items() if c == "hidden"])
    params = dict(model.named_parameters())
    stacks = [n for n in splits if params[n].ndim == 3]
    assert stacks
    for name in stacks:
        E, a, b = params[name].shape
        want = (2 * E, (a // 2, b)) if name.endswith("gate_up_proj") else (E, (a, b))
        assert splits[name] == want, name
    for name in [n for n in splits if n.endswith("shared_mlp.input_linear.weight")]:  # granitemoe_swa: fused 2-D
        assert splits[name] == (2, (params[name].shape[0] // 2, params[name].shape[1])), name
    groups = {g["name"]: g for g in build_param_groups(model, Config())}
    assert set(groups["adamw_router"]["params"]) == {params[n] for n in routers}
    assert not {id(params[n]) for n in routers} & {id(p) for p in groups["muon_hidden"]["params"]}


def _fp32_ns(grad, ns_coefficients, ns_steps, eps):
    return zeropower_via_newtonschulz5(grad, ns_steps, torch.float32, eps)


def test_sharded_muon_on_expert_stacks_equals_torch_muon_on_every_expert_slice(monkeypatch):
    """Each expert's gate, up and down matrix is its own torch.optim.Muon parameter in the reference; the
    same gradients for 5 steps give the same stacks (fp32 Newton-Schulz on both sides, as tests/test_muon.py)."""
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _fp32_ns)
    E, F, d = 4, 24, 32
    g = torch.Generator().manual_seed(0)
    gate_up = torch.nn.Parameter(torch.randn(E, 2 * F, d, generator=g) * 0.1)
    down = torch.nn.Parameter(torch.randn(E, d, F, generator=g) * 0.1)
    slices = [torch.nn.Parameter(m.clone()) for e in range(E) for m in (gate_up.data[e, :F], gate_up.data[e, F:])]
    slices += [torch.nn.Parameter(down.data[e].clone()) for e in range(E)]
    ours = ShardedMuon([dict(params=[gate_up, down], matrices=[(2 * E, (F, d)), (E, (d, F))])], lr=0.02,
                       momentum=0.9, weight_decay=0.1, ns_dtype="fp32")
    ref = torch.optim.Muon(slices, lr=0.02, momentum=0.9, weight_decay=0.1, adjust_lr_fn="original")
    for _ in range(5):
        gu, dn = torch.randn(E, 2 * F, d, generator=g), torch.randn(E, d, F, generator=g)
        gate_up.grad, down.grad = gu, dn
        for k, p in enumerate(slices):
            p.grad = (gu[k // 2, :F] if k % 2 == 0 else gu[k // 2, F:]) if k < 2 * E else dn[k - 2 * E]
        ours.step()
        ref.step()
    got = [m for e in range(E) for m in (gate_up.data[e, :F], gate_up.data[e, F:])] + list(down.data)
    worst = max(((a - b.data).norm() / b.data.norm()).item() for a, b in zip(got, slices))
    assert worst < 1e-6, worst
    # the control: the whole stack as one (E*2F, d) matrix is a different update
    whole = torch.nn.Parameter(gate_up.data.clone())
    whole.grad = gu
    ShardedMuon([dict(params=[whole], matrices=[(1, (E * 2 * F, d))])], lr=0.02, ns_dtype="fp32").step()
    split = torch.nn.Parameter(gate_up.data.clone())
    split.grad = gu
    ShardedMuon([dict(params=[split], matrices=[(2 * E, (F, d))])], lr=0.02, ns_dtype="fp32").step()
    assert (whole.data - split.data).abs().max() > 1e-4


@torch.no_grad()
def test_validation_loss_is_the_language_model_loss_without_the_balancing_loss():
    model = tiny_moe("granitemoe").eval()
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    out = model(input_ids=ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB).float(), ids[:, 1:].reshape(-1))
    coef = model.config.router_aux_loss_coef
    assert abs(out.loss - ce) > 1e-4  # .loss holds the balancing loss too
    assert abs(lm_loss(out, coef) - ce) < 1e-5


def test_expert_load_counts_training_forwards_and_the_bias_moves_towards_balance():
    """deepseek_v3: after a step, an overloaded expert's bias falls by gamma and an underloaded one's rises
    (DeepSeek-V3 sec. 2.1.2); an evaluation forward is not counted; the bias is what checkpoints keep."""
    model = tiny_moe("deepseek_v3", experts=4, experts_per_token=1)
    experts = ExpertLoad(model, bias_speed=0.01)
    ids = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    assert all(c.sum() == 0 for c in experts.counts)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    counts = [c.clone() for c in experts.counts]
    assert all(c.sum() == ids.numel() for c in counts)  # top-1: every token once per MoE layer
    out = experts.step(applied=True, device="cpu")
    loads = torch.stack(counts)
    assert out["train/expert_load_max"] == pytest.approx((loads.max(1).values / loads.mean(1)).max().item())
    for block, load in zip(moe_blocks(model), counts):
        expected = 0.01 * torch.sign(load.mean() - load)
        assert torch.equal(block.router.e_score_correction_bias, expected.float())
    assert set(trained_buffers(model)) == {f"{b.router_name}.e_score_correction_bias" for b in moe_blocks(model)}
    before = [b.router.e_score_correction_bias.clone() for b in moe_blocks(model)]
    experts.step(applied=False, device="cpu")  # a skipped step: no update
    assert all(torch.equal(b.router.e_score_correction_bias, x) for b, x in zip(moe_blocks(model), before))
    experts.close()


def test_active_parameters_count_the_routed_experts_a_token_uses():
    from models import active_params, count_params

    model = tiny_moe("granitemoe", experts=8, experts_per_token=2)
    stacks = sum(p.numel() for b in moe_blocks(model) for p in b.experts.parameters())
    assert count_params(model) - active_params(model) == stacks * 6 // 8


def test_the_swa_mla_recipe_is_deepseek_v3_with_latent_attention_and_experts():
    """configs/swa-mla.yaml: MLA's low-rank projections are hidden matrices (Muon, by role), the experts
    split per expert, the routers on AdamW."""
    from trainer.config import load_config

    cfg = load_config("configs/swa-mla.yaml")
    assert cfg.model.model_type == "deepseek_v3" and not cfg.mup.enabled
    model = build_model(model_config("deepseek_v3", cfg.model.arch(), VOCAB, moe=cfg.model.moe()))
    classes = classify_params(model)
    for proj in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"):
        assert classes[f"model.layers.0.self_attn.{proj}.weight"] == "hidden", proj
    assert [(b.n_experts, b.top_k) for b in moe_blocks(model)] == [(8, 2)] * (cfg.model.arch()["n_layers"] - 1)
    assert model.config.n_shared_experts == 1


@torch.no_grad()
def test_scaleout_eval_reports_the_language_model_loss_of_a_moe_model():
    from trainer.hf.inference import mean_loss

    model = tiny_moe("granitemoe").eval()
    rows = torch.randint(0, VOCAB, (4, 24), generator=torch.Generator().manual_seed(3))
    logits = model(input_ids=rows).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).double(), rows[:, 1:].reshape(-1))
    assert abs(mean_loss(model, rows, batch_size=2) - ce.item()) < 1e-5
