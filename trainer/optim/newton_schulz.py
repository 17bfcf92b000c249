"""Quintic Newton-Schulz orthogonalization (the heart of Muon), batched over same-shape matrices.

Muon replaces a matrix update G = U S V^T by (approximately) U V^T. Computing that with an SVD is
slow on accelerators; five steps of an odd quintic polynomial iteration X <- aX + b(XX^T)X +
c(XX^T)^2 X do it with matrix products only (Jordan et al. 2024, https://kellerjordan.github.io/
posts/muon/). The coefficients (3.4445, -4.7750, 2.0315) overshoot on purpose: they maximise the
slope at zero so small singular values grow fast, and they converge not to 1 but into roughly
[0.7, 1.2], which training does not mind.

    >>> O = zeropower_via_newtonschulz5(torch.randn(3, 64, 32))   # three 64x32 matrices at once
"""

from __future__ import annotations

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7  # same floor on the Frobenius norm as torch.optim.Muon


def default_ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators that have it (twice the matmul rate, the iteration tolerates it); fp32 on
    CPU, where the parity tests need it and where the cost is no worse than 2x, and on GPUs without
    bf16 (fp16's range is too narrow for the unnormalized products of the first steps)."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def wide_batch(G: torch.Tensor, dtype: torch.dtype | None, what: str) -> tuple[torch.Tensor, bool, bool]:
    """(A, B) or (N, A, B) as a batch of wide matrices (N, m, n), m <= n, in ``dtype`` (None:
    ``default_ns_dtype``): returns (X, batched, tall) for ``unwide``. Every iteration here works on the
    wide side, so its Gram matrix X X^T is the small one."""
    assert G.ndim in (2, 3), f"{what} takes (A, B) or (N, A, B), got {tuple(G.shape)}"
    X = G.to(dtype or default_ns_dtype(G.device))
    batched = X.ndim == 3
    X = X if batched else X.unsqueeze(0)
    tall = X.size(-2) > X.size(-1)
    return (X.mT if tall else X), batched, tall


def unwide(X: torch.Tensor, batched: bool, tall: bool) -> torch.Tensor:
    """The inverse of ``wide_batch``'s reshaping."""
    X = X.mT if tall else X
    return X if batched else X.squeeze(0)


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None,
                                eps: float = NS_EPS) -> torch.Tensor:
    """Orthogonalize a matrix (A, B) or a batch of them (N, A, B); returns the same shape, in ``dtype``.

    Tall matrices are transposed so the Gram matrix X X^T is the small side. Dividing by the
    Frobenius norm puts every singular value in [0, 1], where the iteration is designed to work.
    The op order (``addmm``-style fused products) follows torch.optim.Muon so that, in the same
    dtype, both give the same numbers."""
    a, b, c = NS_COEFFICIENTS
    X, batched, tall = wide_batch(G, dtype, "Newton-Schulz")
    # contiguous: BLAS on a transposed (tall) view measured up to 2x slower on CPU
    X = (X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)).contiguous()
    for _ in range(steps):
        gram = X @ X.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        X = torch.baddbmm(X, poly, X, beta=a)  # a*X + (b*A + c*A@A) @ X
    return unwide(X, batched, tall)


def newton_schulz_flops(shape: tuple[int, int], steps: int = 5) -> int:
    """Multiply-add FLOPs (2 per MAC) of ``steps`` iterations on one (A, B) matrix, A <= B after
    the transpose: X X^T (2 m^2 n), poly A@A (2 m^3), poly @ X (2 m^2 n)."""
    m, n = sorted(shape)
    return steps * (4 * m * m * n + 2 * m ** 3)
