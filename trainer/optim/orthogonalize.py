"""``optim.ns_method``: which iteration orthogonalizes Muon's updates, batched by shape.

    quintic             Jordan's 5-step quintic (``newton_schulz.py``), bit-compatible with
                        torch.optim.Muon in the same dtype
    polar_express       per-step minimax coefficients (``polar_express.py``): singular values end
                        near 1 instead of in [0.7, 1.2]
    gram                the quintic run on the Gram matrix (``gram.py``): fewer FLOPs on wide
                        matrices, the same result to rounding
    gram_polar_express  Polar Express's schedule in the Gram form

BENCHMARKS.md ("Orthogonalization methods") has each method's accuracy, cost and training effect.
"""

from __future__ import annotations

import torch

from trainer.optim.gram import gram_flops, gram_newton_schulz
from trainer.optim.newton_schulz import NS_COEFFICIENTS, newton_schulz_flops, zeropower_via_newtonschulz5
from trainer.optim.polar_express import SAFETY, polar_express, polar_express_coefficients

NS_METHODS = ("quintic", "polar_express", "gram", "gram_polar_express")


def orthogonalize(G: torch.Tensor, method: str = "quintic", steps: int = 5,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """(A, B) or (N, A, B) orthogonalized by ``method`` in ``steps`` iterations, in ``dtype``."""
    if method == "quintic":
        return zeropower_via_newtonschulz5(G, steps, dtype)
    if method == "polar_express":
        return polar_express(G, steps, dtype)
    if method == "gram":
        return gram_newton_schulz(G, [NS_COEFFICIENTS] * steps, dtype)
    if method == "gram_polar_express":
        return gram_newton_schulz(G, polar_express_coefficients(steps), dtype, safety=SAFETY, eps=1e-6)
    raise ValueError(f"optim.ns_method must be one of {', '.join(NS_METHODS)}, got {method!r}")


def orthogonalize_flops(shape: tuple[int, int], method: str = "quintic", steps: int = 5) -> int:
    """Matmul FLOPs of ``orthogonalize`` on one matrix of ``shape``."""
    return gram_flops(shape, steps) if method.startswith("gram") else newton_schulz_flops(shape, steps)


def orthogonalize_batched(matrices: list[torch.Tensor], steps: int, dtype: torch.dtype | None,
                          method: str = "quintic") -> list[torch.Tensor]:
    """``orthogonalize`` on a list of matrices, one batched call per distinct shape; same order out."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for k, M in enumerate(matrices):
        by_shape.setdefault(tuple(M.shape), []).append(k)
    out: list[torch.Tensor | None] = [None] * len(matrices)
    for indices in by_shape.values():
        batch = orthogonalize(torch.stack([matrices[k] for k in indices]), method, steps, dtype)
        for k, O in zip(indices, batch.unbind(0)):
            out[k] = O
    return out
