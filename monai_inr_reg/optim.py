"""Adam for the per-pair fits, without ``torch.optim`` where torch allows it.

Making the first ``torch.optim`` optimiser in a process imports torch's compiler stack
(``torch._dynamo``, sympy: 829 modules, 0.75 s here), which is as long as a whole 2D rigid
registration. :class:`FusedAdam` calls the kernel that ``torch.optim.Adam(fused=True)`` calls,
with the same state and arguments, so its updates are the same bit for bit (tested).
"""

from __future__ import annotations

import torch

__all__ = ["FusedAdam", "adam"]


class FusedAdam:
    """Adam (no weight decay, no AMSGrad) on ``torch._fused_adam_``.

    The subset of the ``torch.optim.Optimizer`` interface the fits use: ``param_groups`` (dicts
    with ``"params"`` and ``"lr"``; other keys are kept and ignored), ``zero_grad(set_to_none=True)``
    and ``step()``. State per parameter as in ``torch.optim.Adam(fused=True)``: first and second
    moments like the parameter, a float32 0-d step count on its device.

    Args:
        param_groups: ``[{"params": [...], "lr": float, ...}, ...]``.
        betas, eps: as in ``torch.optim.Adam``.
    """

    def __init__(self, param_groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [dict(g, params=list(g["params"])) for g in param_groups]
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            buckets: dict[tuple, list[list[torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                lists = buckets.setdefault((p.device, p.dtype), [[], [], [], [], []])
                for target, value in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    target.append(value)
            for params, grads, exp_avgs, exp_avg_sqs, steps in buckets.values():
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                                   lr=float(group["lr"]), beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
                                   eps=self.eps, maximize=False, grad_scale=None, found_inf=None)


def adam(param_groups: list[dict]):
    """Adam on the fused kernel: :class:`FusedAdam` where this torch has ``torch._fused_adam_`` for
    every parameter's device (CPU, CUDA), else ``torch.optim.Adam(fused=True)``, else the plain
    ``torch.optim.Adam``. The fused kernel makes one pass over each parameter instead of a dozen:
    2x faster steps on the hash tables (measured 0.9 vs 2.2 ms)."""
    devices = {p.device.type for g in param_groups for p in g["params"]}
    if hasattr(torch, "_fused_adam_") and devices <= {"cpu", "cuda"}:
        return FusedAdam(param_groups)
    try:
        return torch.optim.Adam(param_groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(param_groups)
