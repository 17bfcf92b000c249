"""muP: structural classes, forward multipliers, init, lr table, config checks, export round trip."""

from __future__ import annotations

import math

import pytest
import torch

from models import build_model, granite_config, resolve_preset
from trainer.config.base import ConfigError, from_dict
from trainer.config.mup import MupConfig
from trainer.mup import (
    apply_mup_init,
    block_output_projections,
    classify_params,
    lr_multiplier,
    mup_multipliers,
    weight_decay_multiplier,
    width_mult,
)

VOCAB = 97


def tiny_arch(d_model=64, tie=False, n_layers=2):
    return resolve_preset("tiny", d_model=d_model, n_layers=n_layers, n_heads=4, n_kv_heads=2, d_ff=3 * d_model,
                          max_seq_len=64, tie_embeddings=tie)


def mup_model(cfg, d_model=64, tie=False, seed=0):
    arch = tiny_arch(d_model, tie)
    model = build_model(granite_config(arch, VOCAB, multipliers=mup_multipliers(arch, cfg)), seed)
    apply_mup_init(model, cfg, seed=seed)
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_classes_come_from_structure(tie):
    model = mup_model(MupConfig(enabled=True, base_width=32), tie=tie)
    classes = classify_params(model)
    emb = model.get_input_embeddings().weight
    by_param = {id(p): classes[n] for n, p in model.named_parameters()}
    assert by_param[id(emb)] == "embedding"
    assert ("readout" in classes.values()) == (not tie)
    for n, p in model.named_parameters():
        if p is not emb and p is not model.get_output_embeddings().weight:
            assert classes[n] == ("vector" if p.ndim == 1 else "hidden"), n
    renamed = classify_params(model, {"model.norm.weight": "hidden"})
    assert renamed["model.norm.weight"] == "hidden"
    with pytest.raises(ValueError, match="not a parameter"):
        classify_params(model, {"nope": "hidden"})


def test_multipliers_and_width_mult():
    cfg = MupConfig(enabled=True, base_width=32, attn_alpha=2.0, output_alpha=4.0, embedding_multiplier=3.0)
    mult = mup_multipliers(tiny_arch(128), cfg)
    assert mult == dict(embedding_multiplier=3.0, attention_multiplier=2.0 / 32, residual_multiplier=1.0,
                        logits_scaling=4.0 / 4.0)
    assert mup_multipliers(tiny_arch(128), MupConfig()) == {}
    assert width_mult(128, cfg) == 4.0 and width_mult(128, MupConfig()) == 1.0
    sp = granite_config(tiny_arch(128), VOCAB, multipliers={})
    assert sp.attention_multiplier == pytest.approx(1 / math.sqrt(32)) and sp.logits_scaling == 1.0


def test_lr_table():
    assert lr_multiplier("hidden", "adamw", 4.0) == 0.25
    for cls in ("embedding", "readout", "vector"):
        assert lr_multiplier(cls, "adamw", 4.0) == 1.0
    assert lr_multiplier("hidden", "muon", 4.0, "original") == 1.0
    assert lr_multiplier("hidden", "muon", 4.0, "match_rms_adamw") == 0.5
    assert weight_decay_multiplier(0.25, independent=True) == 4.0
    assert weight_decay_multiplier(0.25, independent=False) == 1.0
    with pytest.raises(ValueError):
        lr_multiplier("hidden", "sgd", 2.0)


def test_init_stds_follow_the_table():
    cfg = MupConfig(enabled=True, base_width=32, base_std=0.02, depth_scaled_init=True, readout_zero_init=True)
    model = mup_model(cfg, d_model=128)
    out_proj = block_output_projections(model)
    assert out_proj == {f"model.layers.{i}.{m}.weight" for i in range(2) for m in ("self_attn.o_proj", "mlp.down_proj")}
    params = dict(model.named_parameters())
    assert params["lm_head.weight"].abs().max() == 0  # readout zero-init
    assert params["model.layers.0.self_attn.q_proj.weight"].abs().max() == 0  # query zero-init
    assert params["model.embed_tokens.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert params["model.layers.0.self_attn.k_proj.weight"].std().item() == pytest.approx(0.01, rel=0.05)
    down = 0.02 * math.sqrt(32 / 384) / 2  # fan_in 3*128, depth factor 1/sqrt(2*2)
    assert params["model.layers.1.mlp.down_proj.weight"].std().item() == pytest.approx(down, rel=0.05)
    assert torch.equal(params["model.norm.weight"], torch.ones(128))
    readout = mup_model(MupConfig(enabled=True, base_width=32), d_model=128).lm_head.weight
    assert readout.std().item() == pytest.approx(0.02, rel=0.05)  # constant std: the 1/m is in logits_scaling
    again = mup_model(cfg, d_model=128)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


def test_init_is_noop_when_disabled():
    arch = tiny_arch(64)
    model = build_model(granite_config(arch, VOCAB), 0)
    before = [p.clone() for p in model.parameters()]
    apply_mup_init(model, MupConfig())
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="mup.base_width"):
        from_dict(MupConfig, {"base_width": 0})
    with pytest.raises(ConfigError, match="mup.attn_alpha"):
        from_dict(MupConfig, {"attn_alpha": -1.0})
    with pytest.raises(ConfigError, match="class_overrides"):
        from_dict(MupConfig, {"class_overrides": {"x": "matrix"}})
    with pytest.raises(ValueError, match="mup.query_names"):
        mup_model(MupConfig(enabled=True, query_names=["wq"]))


@pytest.mark.parametrize("tie", [False, True])
def test_export_reloads_as_stock_transformers(tmp_path, tie):
    """A muP model (trained a few steps) saved and reloaded with AutoModelForCausalLM gives the same logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = mup_model(MupConfig(enabled=True, base_width=32), d_model=64, tie=tie)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, VOCAB, (2, 16))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(reloaded).__name__ == "GraniteForCausalLM"
    assert reloaded.config.logits_scaling == model.config.logits_scaling == 2.0
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - reloaded(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-5
