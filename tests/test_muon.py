"""ShardedMuon in whole-param mode (1 process): parity with torch.optim.Muon / AdamW, skip, state, config."""

import copy

import pytest
import torch
from torch.optim import _muon as torch_muon

from trainer.config import Config
from trainer.mup import lr_multiplier
from trainer.optim import ShardedMuon, build_optimizer, build_param_groups
from trainer.optim.newton_schulz import zeropower_via_newtonschulz5


def _fp32_ns(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's NS always runs in bf16; this fp32 stand-in lets the rest of the step be
    compared at 1e-6 (docs/design.md, 'Muon references')."""
    return zeropower_via_newtonschulz5(grad, ns_steps, torch.float32, eps)


def _params(seed=0, shapes=((32, 16), (16, 48), (24, 24))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g) * 0.1) for s in shapes]


def _run(opt, params, steps=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def _max_rel(a, b):
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b))


@pytest.mark.parametrize("scale,nesterov,wd", [("original", True, 0.1), ("match_rms_adamw", False, 0.0),
                                                ("match_rms_adamw", True, 0.05)])
def test_matches_torch_muon(monkeypatch, scale, nesterov, wd):
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _fp32_ns)
    ours, ref = _params(), _params()
    opt = ShardedMuon([dict(params=ours, kind="muon")], lr=0.02, momentum=0.9, nesterov=nesterov,
                      scale=scale, weight_decay=wd, ns_dtype="fp32")
    torch_opt = torch.optim.Muon(ref, lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=wd,
                                 adjust_lr_fn=scale)
    _run(opt, ours)
    _run(torch_opt, ref)
    assert _max_rel(ours, ref) < 1e-6


def test_matches_torch_muon_bf16_ns():
    """Both in bf16 Newton-Schulz (torch's default): agreement to bf16-sized tolerance."""
    ours, ref = _params(), _params()
    _run(ShardedMuon([dict(params=ours)], lr=0.02, ns_dtype="bf16"), ours, steps=3)
    _run(torch.optim.Muon(ref, lr=0.02, weight_decay=0.0), ref, steps=3)
    assert _max_rel(ours, ref) < 1e-2


def test_adamw_groups_match_torch_adamw():
    ours, ref = _params(shapes=((8,), (4, 6))), _params(shapes=((8,), (4, 6)))
    opt = ShardedMuon([dict(params=ours, kind="adamw", lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)])
    _run(opt, ours)
    _run(torch.optim.AdamW(ref, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False), ref)
    assert _max_rel(ours, ref) < 1e-6


def test_conv_weight_viewed_as_matrix():
    conv = torch.nn.Parameter(torch.randn(8, 3, 3, 3))
    opt = ShardedMuon([dict(params=[conv])], lr=0.02)
    conv.grad = torch.randn_like(conv)
    before = conv.detach().clone()
    opt.step()
    assert conv.shape == (8, 3, 3, 3) and not torch.equal(conv, before)


def test_rejects_vectors_in_muon_group():
    with pytest.raises(ValueError, match="1-D"):
        ShardedMuon([dict(params=[torch.nn.Parameter(torch.zeros(4))], kind="muon")])


def test_nonfinite_grad_skips_step_without_touching_state():
    params = _params()
    opt = ShardedMuon([dict(params=params[:2], kind="muon"), dict(params=params[2:], kind="adamw")])
    _run(opt, params, steps=2)
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict())
    for p in params:
        p.grad = torch.randn_like(p)
    params[2].grad[0, 0] = float("nan")
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    after = opt.state_dict()
    for k, s in state_before["state"].items():
        for key, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(after["state"][k][key])), key


def test_state_dict_resume_is_bit_exact():
    """Run 3 steps, save, reload into a fresh optimizer, run 3 more == 6 uninterrupted steps."""
    a = _params()
    opt_a = ShardedMuon([dict(params=a[:2]), dict(params=a[2:], kind="adamw", lr=1e-3)])
    _run(opt_a, a, steps=6)

    b = _params()
    opt_b = ShardedMuon([dict(params=b[:2]), dict(params=b[2:], kind="adamw", lr=1e-3)])
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=g) for p in b] for _ in range(6)]
    for step in range(3):
        for p, gr in zip(b, grads[step]):
            p.grad = gr
        opt_b.step()
    saved = copy.deepcopy(opt_b.state_dict())
    opt_c = ShardedMuon([dict(params=b[:2]), dict(params=b[2:], kind="adamw", lr=1e-3)])
    opt_c.load_state_dict(saved)
    for step in range(3, 6):
        for p, gr in zip(b, grads[step]):
            p.grad = gr
        opt_c.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _tiny_model():
    from models import build_model, granite_config, resolve_preset
    arch = resolve_preset("tiny", d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=96)
    return build_model(granite_config(arch, vocab_size=128), seed=0)


def test_build_optimizer_from_config():
    model = _tiny_model()
    cfg = Config()
    cfg.mup.enabled, cfg.mup.base_width = True, 32  # width_mult 2
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, ShardedMuon)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["muon_hidden"]["kind"] == "muon"
    assert all(p.ndim == 2 for p in groups["muon_hidden"]["params"])
    assert {g["kind"] for n, g in groups.items() if n != "muon_hidden"} == {"adamw"}
    assert groups["muon_hidden"]["lr"] == pytest.approx(cfg.optim.lr * lr_multiplier("hidden", "muon", 2.0,
                                                                                     cfg.optim.scale))
    assert groups["adamw_embedding"]["lr"] == pytest.approx(cfg.optim.adamw_lr * lr_multiplier(
        "embedding", "adamw", 2.0))
    assert groups["adamw_vector"]["weight_decay"] == 0.0
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())
    assert not any(hasattr(p, "use_muon") for p in model.parameters())

    cfg.optim.name = "adamw"
    adamw = build_optimizer(model, cfg)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["name"] for g in adamw.param_groups] == [g["name"] for g in build_param_groups(model, cfg)]
    assert {g["kind"] for g in adamw.param_groups} == {"adamw"}


def test_trains_tiny_model():
    model = _tiny_model()
    opt = build_optimizer(model, Config())
    torch.manual_seed(0)
    batch = torch.randint(0, 128, (4, 32))
    losses = []
    for _ in range(8):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
