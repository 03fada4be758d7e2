"""LARS as used by the MAE / MoCo v3 linear probe.

Hand-written on purpose: ``lightly.utils.lars.LARS`` applies the layer-wise trust ratio only
to parameter groups with non-zero weight decay, so with the probe's ``weight_decay=0`` it
reduces to plain SGD. MAE's ``util/lars.py`` (from MoCo v3) applies the trust ratio to every
parameter with ``ndim > 1`` regardless of weight decay; this class reproduces that rule.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio ``trust * ||p|| / ||g + wd p||``.

    Biases and normalisation parameters (``ndim <= 1``) get neither weight decay nor the
    trust ratio (MAE Appendix A.2, linear probing with LARS).

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        weight_decay: L2 penalty on ``ndim > 1`` parameters.
        momentum: momentum factor.
        trust_coefficient: the ``eta`` of LARS (You et al., 2017).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient!r}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update (closure as in ``torch.optim``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if p.ndim > 1:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(d_p)
                    ratio = torch.where(
                        (p_norm > 0) & (u_norm > 0), group["trust_coefficient"] * p_norm / u_norm, torch.ones_like(p_norm)
                    )
                    d_p = d_p.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d_p)
                p.add_(mu, alpha=-group["lr"])
        return loss
