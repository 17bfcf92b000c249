"""Model presets: sizes, a forward pass, and that they are stock transformers models."""

import pytest
import torch

from models import PRESETS, build_model, count_params, granite_config, resolve_preset

EXPECTED_MILLIONS = {"small": (4, 5), "125m": (100, 160), "350m": (300, 420), "1b": (900, 1500)}


def test_tiny_is_under_2m_and_runs_forward():
    model = build_model(granite_config(resolve_preset("tiny"), 4096), seed=0)
    assert count_params(model) < 2_000_000
    ids = torch.randint(0, 4096, (2, 32))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 32, 4096) and torch.isfinite(out.loss)
    assert abs(out.loss.item() - torch.log(torch.tensor(4096.0)).item()) < 1.0  # near-uniform at init


def test_same_seed_same_weights():
    cfg = granite_config(resolve_preset("tiny"), 512)
    a, b = build_model(cfg, seed=3), build_model(cfg, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", ["125m", "350m", "1b"])
def test_large_presets_have_their_size(name):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = build_model(granite_config(resolve_preset(name), 32768), seed=0)
    lo, hi = EXPECTED_MILLIONS[name]
    assert lo <= count_params(model) / 1e6 <= hi


def test_overrides_and_bad_preset():
    arch = resolve_preset("tiny", d_model=64, n_heads=2, n_kv_heads=2)
    assert arch["d_model"] == 64 and arch["n_layers"] == PRESETS["tiny"]["n_layers"]
    with pytest.raises(ValueError, match="model.preset"):
        resolve_preset("7b")
    with pytest.raises(ValueError, match="n_heads"):
        resolve_preset("tiny", d_model=100, n_heads=3)


def test_exports_and_reloads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_model(granite_config(resolve_preset("tiny"), 300), seed=1).eval()
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)
