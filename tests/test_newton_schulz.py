"""Newton-Schulz: against an SVD (fp32, CPU), against torch.optim.Muon's own NS (bf16), batching."""

import pytest
import torch
from torch.optim import _muon as torch_muon

from trainer.optim.newton_schulz import NS_COEFFICIENTS, zeropower_via_newtonschulz5


def _scalar_quintic(s: torch.Tensor, steps: int) -> torch.Tensor:
    """The iteration on one singular value: NS applies an odd polynomial to each of them."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        s = a * s + b * s ** 3 + c * s ** 5
    return s


def test_matches_svd_prediction():
    """NS(G) = U p(S / ||G||_F) V^T exactly in exact arithmetic; the fp32 result matches that SVD
    prediction, and every singular value lands in Jordan's band (~0.7 to 1.2), not at 0."""
    torch.manual_seed(0)
    for shape in [(64, 32), (32, 64), (48, 48)]:
        G = torch.randn(*shape, dtype=torch.float64)
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        expected = U @ torch.diag(_scalar_quintic(S / S.norm(), 5)) @ Vh
        O = zeropower_via_newtonschulz5(G.float(), steps=5, dtype=torch.float32).double()
        assert (O - expected).norm() / expected.norm() < 1e-4, shape
        s = torch.linalg.svdvals(O)
        assert s.min() > 0.6 and s.max() < 1.25, (shape, s.min(), s.max())


def test_matches_torch_muon_ns_in_bf16():
    """Same dtype and op order as torch.optim.Muon's private NS: agreement to bf16 precision."""
    torch.manual_seed(2)
    for shape in [(96, 32), (32, 96), (64, 64)]:
        G = torch.randn(*shape)
        ours = zeropower_via_newtonschulz5(G, steps=5, dtype=torch.bfloat16).float()
        theirs = torch_muon._zeropower_via_newtonschulz(G, NS_COEFFICIENTS, 5, torch_muon.EPS).float()
        rel = (ours - theirs).norm() / theirs.norm()
        assert rel < 2e-2, (shape, rel)


def test_batched_equals_one_by_one():
    torch.manual_seed(3)
    G = torch.randn(5, 48, 16)
    batched = zeropower_via_newtonschulz5(G, dtype=torch.float32)
    single = torch.stack([zeropower_via_newtonschulz5(g, dtype=torch.float32) for g in G])
    torch.testing.assert_close(batched, single, rtol=1e-6, atol=1e-6)
    assert batched.shape == G.shape


# ----------------------------------------------------------------------------- optim.ns_method

def _plain(G: torch.Tensor, coefficients, safety: float, eps: float) -> torch.Tensor:
    """The textbook iteration on one matrix, written out: X <- aX + b(XX^T)X + c(XX^T)^2 X."""
    X = G.T if G.shape[0] > G.shape[1] else G
    X = X / (X.norm() * (1 + safety) + eps)
    for a, b, c in coefficients:
        A = X @ X.T
        X = a * X + b * (A @ X) + c * (A @ A @ X)
    return X.T if G.shape[0] > G.shape[1] else X


SHAPES = [(48, 160), (160, 48), (64, 64)]


@pytest.mark.parametrize("shape", SHAPES)
def test_polar_express_is_its_schedule_and_lands_closer_to_one_than_the_quintic(shape):
    from trainer.optim.orthogonalize import orthogonalize
    from trainer.optim.polar_express import POLAR_EXPRESS_COEFFICIENTS, SAFETY

    G = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = orthogonalize(G, "polar_express", 5, torch.float64)
    ref = torch.stack([_plain(g, POLAR_EXPRESS_COEFFICIENTS, SAFETY, 1e-6) for g in G])
    assert (ours - ref).abs().max() < 1e-12
    rms = {m: (torch.linalg.svdvals(orthogonalize(G, m, 5, torch.float64)) - 1).pow(2).mean().sqrt().item()
           for m in ("quintic", "polar_express")}
    assert rms["polar_express"] < 0.6 * rms["quintic"], rms  # measured: 0.09 against 0.17-0.22
    s = torch.linalg.svdvals(ours)  # a random square matrix keeps a tiny singular value after 5 steps of either
    assert (0.75 < s.min() or shape[0] == shape[1]) and s.max() < 1.15, (s.min(), s.max())


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_forms_equal_their_plain_iterations_with_fewer_flops_on_wide_matrices(shape):
    from trainer.optim.orthogonalize import orthogonalize, orthogonalize_flops

    G = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for gram, plain in (("gram", "quintic"), ("gram_polar_express", "polar_express")):
        diff = (orthogonalize(G, gram, 5, torch.float64) - orthogonalize(G, plain, 5, torch.float64)).abs().max()
        assert diff < 1e-7, (gram, diff)  # exact arithmetic: equal; the eps floors differ at 1e-8
        ratio = orthogonalize_flops(shape, gram) / orthogonalize_flops(shape, plain)
        assert ratio < 0.8 if shape[0] != shape[1] else ratio == 1.0, (shape, ratio)
    G32 = G.float()  # fp32, as the optimizer runs it on CPU: the restart keeps the Gram form accurate
    fp32 = {m: orthogonalize(G32, m, 5, torch.float32) for m in ("gram", "quintic")}
    assert (fp32["gram"] - fp32["quintic"]).abs().max() < 1e-4


def test_an_unknown_method_is_refused():
    from trainer.optim.orthogonalize import orthogonalize

    with pytest.raises(ValueError, match="optim.ns_method must be one of quintic, polar_express"):
        orthogonalize(torch.randn(4, 8), "newton")
