"""Newton-Schulz: against an SVD (fp32, CPU), against torch.optim.Muon's own NS (bf16), batching."""

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
