"""Polar Express: a Newton-Schulz-style iteration whose polynomial changes every step.

The quintic (``newton_schulz.py``) applies one odd polynomial p(x) = a x + b x^3 + c x^5 five times;
its coefficients are tuned for a fast start, and its fixed point is not 1: the singular values end
anywhere in about [0.7, 1.2]. Amsel, Persson, Musco & Gower ("The Polar Express: Optimal Matrix Sign
Methods and Their Application to the Muon Algorithm", arXiv 2505.16932) choose each step's
(a, b, c) by a minimax problem: the composition of the five polynomials is the best approximation to
sign(x) on [l, 1] that such a composition can be. Early steps pull the small singular values up
hard (8.16 x at the origin, against the quintic's 3.44), later ones flatten the result onto 1.

Two details keep it safe in low precision: the input is divided by 1.02 x its Frobenius norm (the
"safety factor": rounding can leave a singular value slightly above 1, where the aggressive first
polynomial would blow it up), and the coefficients were derived with that margin. The table is the
paper's 5-step schedule at l = 1e-3 with the 2% safety factor, as the modded-nanogpt speedrun uses.

    >>> O = polar_express(torch.randn(3, 64, 32))   # three 64x32 matrices at once
"""

from __future__ import annotations

import torch

from trainer.optim.newton_schulz import unwide, wide_batch

POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
SAFETY = 0.02  # divide by (1 + SAFETY) x the Frobenius norm
EPS = 1e-6


def polar_express_coefficients(steps: int) -> list[tuple[float, float, float]]:
    """The schedule for ``steps`` iterations: the paper's 5; past the fifth, the fifth again (its
    polynomial keeps 1 fixed to within a few 1e-3 and only flattens further)."""
    table = list(POLAR_EXPRESS_COEFFICIENTS)
    return table[:steps] + [table[-1]] * max(0, steps - len(table))


def polar_express(G: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Orthogonalize (A, B) or (N, A, B) with the Polar Express schedule; returns the same shape in
    ``dtype`` (None: fp32 on CPU, bf16 on GPU, as ``newton_schulz.default_ns_dtype``)."""
    X, batched, tall = wide_batch(G, dtype, "Polar Express")
    X = (X / (X.norm(dim=(-2, -1), keepdim=True) * (1 + SAFETY) + EPS)).contiguous()
    for a, b, c in polar_express_coefficients(steps):
        gram = X @ X.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        X = torch.baddbmm(X, poly, X, beta=a)  # a*X + (b*A + c*A@A) @ X
    return unwide(X, batched, tall)
