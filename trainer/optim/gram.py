"""Gram Newton-Schulz: the same polynomial iteration, run on the small Gram matrix.

Every Newton-Schulz-style step multiplies X (m x n, m <= n after a transpose) on the left by a
polynomial of its Gram matrix R = X X^T: X' = P(R) X with P(R) = aI + bR + cR^2. So after k steps
X_k = Q_k X_0 with Q_k = P_k ... P_1, and the Gram matrix follows without touching X:
R' = P R P^T = P^2 R (P is a polynomial in R, symmetric, commuting with it). Iterating on (Q, R),
both m x m, costs O(m^3) per step instead of O(m^2 n); X is multiplied once at the end. For the
wide matrices of a transformer (an MLP's 768 x 2048, aspect ~2.7; 2048 x 5632 at 1b) that removes
most of the n-sized products (Tri Dao's group, "Gram Newton-Schulz", 2026,
https://tridao.me/blog/2026/gram-newton-schulz/; DeepSpeed #7953 made it its Muon's default).

R loses accuracy with every step (its error grows with the condition of P^2), so the iteration
"restarts" once: at step ``RESTART`` it applies Q to X, recomputes R from the new X and starts a
new Q. Square matrices gain nothing (m = n) and run the plain iteration.

The coefficients are a schedule (one (a, b, c) per step): the quintic's fixed triple (``gram``) or
Polar Express's (``gram_polar_express``); the result equals the plain iteration's in exact
arithmetic, and to rounding in fp32.

    >>> O = gram_newton_schulz(torch.randn(4, 96, 256), coefficients=[(3.4445, -4.7750, 2.0315)] * 5)
"""

from __future__ import annotations

import torch

from trainer.optim.newton_schulz import unwide, wide_batch

RESTART = 2  # the step at which Q is folded into X and R recomputed


def gram_newton_schulz(G: torch.Tensor, coefficients: list[tuple[float, float, float]],
                       dtype: torch.dtype | None = None, safety: float = 0.0, eps: float = 1e-7) -> torch.Tensor:
    """Orthogonalize (A, B) or (N, A, B) with one step per ``coefficients`` entry; returns the same
    shape in ``dtype`` (None: ``newton_schulz.default_ns_dtype``). The input is divided by
    (1 + ``safety``) x its Frobenius norm (floored at ``eps``)."""
    X, batched, tall = wide_batch(G, dtype, "Gram Newton-Schulz")
    X = (X / (X.norm(dim=(-2, -1), keepdim=True) * (1 + safety)).clamp(min=eps)).contiguous()
    if X.size(-2) == X.size(-1):  # square: no saving, the plain iteration
        for a, b, c in coefficients:
            R = X @ X.mT
            X = torch.baddbmm(X, torch.baddbmm(R, R, R, beta=b, alpha=c), X, beta=a)
    else:
        X = _gram_iterate(X, coefficients)
    return unwide(X, batched, tall)


def _gram_iterate(X: torch.Tensor, coefficients: list[tuple[float, float, float]]) -> torch.Tensor:
    """The (Q, R) iteration on a batch of wide matrices X (N, m, n), m < n; returns Q X."""
    eye = torch.eye(X.size(-2), dtype=X.dtype, device=X.device)
    R, Q = X @ X.mT, None
    last = len(coefficients) - 1
    for i, (a, b, c) in enumerate(coefficients):
        if i == RESTART and Q is not None:  # fold the product so far into X; a fresh, exact R
            X = Q @ X
            R, Q = X @ X.mT, None
        P = torch.baddbmm(R, R, R, beta=b, alpha=c) + a * eye  # aI + bR + cR^2
        Q = P if Q is None else P @ Q
        if i < last and i + 1 != RESTART:  # the next step's Gram matrix: P R P = P (P R)
            R = P @ (P @ R)
    return Q @ X


def gram_flops(shape: tuple[int, int], steps: int = 5) -> int:
    """Multiply-add FLOPs (2 per MAC) of ``gram_newton_schulz`` on one (A, B) matrix with ``steps``
    coefficients (m <= n after the transpose); the plain iteration's for a square one."""
    m, n = sorted(shape)
    if m == n:
        return steps * 6 * m ** 3
    flops, fresh = 2 * m * m * n, True  # R
    for i in range(steps):
        if i == RESTART and not fresh:
            flops += 4 * m * m * n  # Q X, then R
            fresh = True
        flops += 2 * m ** 3 + (0 if fresh else 2 * m ** 3)  # R@R, P@Q
        fresh = False
        if i < steps - 1 and i + 1 != RESTART:
            flops += 4 * m ** 3  # P (P R)
    return flops + 2 * m * m * n  # Q X
