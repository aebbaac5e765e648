"""Sums over points in an order that the number of points alone decides, not the thread count.

torch's CPU matrix products split a long reduction (``a.T @ b`` over thousands of rows) between
threads, so its last bits, and through an optimiser's feedback whole registrations, change with
``torch.set_num_threads``. Here the rows are cut into fixed blocks of ``ROW_BLOCK``: each block's
product is one small matrix product (never split), the blocks run in parallel as a batch, and their
results are added pairwise in a fixed tree. Both functions are differentiable; their backward
passes only need products that reduce over the short axes (never over the rows), which are
thread-independent as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ROW_BLOCK", "SMALL_PRODUCT", "transposed_matmul", "row_sum", "linear"]

ROW_BLOCK = 512  # rows per block: products up to this many rows are not split between threads (measured)
SMALL_PRODUCT = 16  # outputs of fewer entries are summed elementwise: a (P, 1) x (P, 1) product is split from ~500 rows


def _pairwise_sum(parts: torch.Tensor) -> torch.Tensor:
    """``parts.sum(0)`` for ``(N, ...)``, added pairwise in a tree that depends on ``N`` only."""
    while parts.shape[0] > 1:
        half = parts.shape[0] // 2
        summed = parts[:half] + parts[half:2 * half]
        parts = summed if parts.shape[0] % 2 == 0 else torch.cat([summed, parts[2 * half:]])
    return parts[0]


def transposed_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a.T @ b`` for ``a`` ``(P, K)`` and ``b`` ``(P, M)``: ``(K, M)``, summed over the ``P`` rows
    in blocks of :data:`ROW_BLOCK` (the same bits at any thread count; differentiable)."""
    rows, k, m = a.shape[0], a.shape[1], b.shape[1]
    if k * m < SMALL_PRODUCT:
        return row_sum((a[:, :, None] * b[:, None, :]).reshape(rows, k * m)).reshape(k, m)
    if rows <= ROW_BLOCK:
        return a.T @ b
    full = rows // ROW_BLOCK * ROW_BLOCK
    blocks_a = a[:full].reshape(-1, ROW_BLOCK, a.shape[1])
    blocks_b = b[:full].reshape(-1, ROW_BLOCK, b.shape[1])
    parts = torch.bmm(blocks_a.transpose(1, 2), blocks_b)
    if full < rows:
        parts = torch.cat([parts, (a[full:].T @ b[full:])[None]])
    return _pairwise_sum(parts)


def row_sum(a: torch.Tensor) -> torch.Tensor:
    """``a.sum(0)`` for ``a`` ``(P, M)``: ``(M,)``, in blocks of :data:`ROW_BLOCK` rows added pairwise
    (a product with a column of ones would be split between threads for small ``M``)."""
    rows = a.shape[0]
    if rows == 0:
        return a.sum(0)  # zeros
    full = rows // ROW_BLOCK * ROW_BLOCK
    parts = a[:full].reshape(-1, ROW_BLOCK, a.shape[1]).sum(1)
    if full < rows:
        parts = torch.cat([parts, a[full:].sum(0, keepdim=True)])
    return _pairwise_sum(parts)


class _Linear(torch.autograd.Function):
    """``F.linear`` whose weight and bias gradients sum over the rows with :func:`transposed_matmul`
    and :func:`row_sum`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        grad_weight = transposed_matmul(grad_out, x) if ctx.needs_input_grad[1] else None
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = row_sum(grad_out)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` ``(P, K)``, ``weight`` ``(M, K)``, ``bias`` ``(M,)``:
    ``(P, M)``; its gradients are the same bits at any thread count (:func:`transposed_matmul`)."""
    return _Linear.apply(x, weight, bias)
