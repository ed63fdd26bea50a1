"""Triton kernel of softmax HD-RepSSA's attention weights: decay, scale, padding, softmax.

From the score map ``S = Q K^T`` (N, H, C, L), softmax HD-RepSSA (Eq. 13 right, 14-15)
takes ``softmax((S * H) / sqrt(d_k))`` over the valid keys; the PyTorch operations
(:func:`~espnet_imlspike.fast.long_attention._softmax_chunk`) make six passes over the map
(decay, scale, padding, a float32 copy, softmax, padding again) plus the cast the next
matrix product makes. :func:`softmax_weights` reads the scores once and writes the
weights in the dtype the product takes (and, for backward, the float32 softmax), with
the PyTorch operations' roundings on CUDA:

* ``H[i, j] = phi^|i - j|`` as ``decay_rows`` computes it (``exp`` of ``|i - j|`` times
  ``log(phi)`` in float32, rounded to the scores' dtype), from a table of the L powers
  made with those same operations; the product rounded to the scores' dtype;
* the division by ``sqrt(d_k)`` as PyTorch's CUDA division by a Python number does it:
  a multiplication by ``1 / sqrt(d_k)`` computed in float32, rounded to the scores' dtype;
* padded keys set to the dtype's lowest value, then the softmax in float32 in the order of
  PyTorch's CUDA softmax for rows of up to 1024 keys (``softmax_warp_forward``): lane
  ``l`` of 32 keeps the maximum and sums ``exp(x - max)`` of keys ``l, l + 32, ...`` in
  order, the lanes' sums are then added pairwise at distances 16, 8, 4, 2, 1; CUDA's
  ``expf`` (libdevice) and correctly rounded division;
* padded keys' weights 0, cast (round to nearest even) to the product's dtype.

On the GPU the weights equal the PyTorch operations' bit for bit (``bench/fast_checks.py``)
except where a weight falls below float32's normal range (1.2e-38): Triton's libdevice
flushes such values to zero. Used on CUDA tensors by the fast path when the Triton
kernels of :mod:`.kernels` are; rows longer than 1024 keys (PyTorch reduces those in
another order) and other dtype combinations keep the PyTorch operations. On the CPU the
tests run this kernel in Triton's interpreter.

Backward (:func:`softmax_weights_backward`): from the gradient of the weights ``G = dO V^T``
the chunked attention's backward (:class:`~.long_attention._ChunkedSoftmax`) made nine
passes over the map (a float32 copy, padding, ``G * P`` and the softmax backward, the cast,
padding, the scale, the decay factors and their product). One kernel reads ``G`` and the
float32 softmax ``P`` once and writes the scores' gradient, with PyTorch's CUDA
arithmetic: ``T = G * P`` (padded keys' ``G`` zeroed first), each row's ``sum(T)`` in the
order of ``softmax_warp_backward`` (the forward's lanes and pairwise steps),
``T - P * sum`` as one fused multiply-add (``fma(-P, sum, T)``, the contraction nvcc
makes of that kernel's expression), then the cast, padding, scale and decay roundings of
the forward.
"""

import math
import os
from typing import Optional, Tuple

import numpy as np
import torch

from espnet_imlspike.fast import kernels

MAX_KEYS = 1024  # PyTorch's warp softmax (whose summation order is reproduced) ends here
_LANES = 32
_BLOCK_ROWS = 16

if kernels.triton is not None:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    _INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")

    @triton.jit
    def _exp(x):
        """CUDA's expf on the GPU; numpy's exp in Triton's interpreter (no libdevice)."""
        if _INTERPRETED:
            return tl.exp(x)
        else:
            return libdevice.exp(x)

    @triton.jit
    def _rows(rows, queries, heads, start, keys, BLOCK_R: tl.constexpr):
        """This program's rows of the (N, H, C, L) map: in range, their utterance, their
        query position and their first element."""
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        return r < rows, r // (heads * queries), start + r % queries, r.to(tl.int64) * keys

    @triton.jit
    def _lanes_total(acc, BLOCK_R: tl.constexpr):
        """The row sums of 32 lanes' sums (BLOCK_R, 32) as PyTorch's warp reduction adds
        them: pairwise at distances 16, 8, 4, 2, 1; (BLOCK_R, 1)."""
        acc = tl.sum(tl.reshape(acc, (BLOCK_R, 2, 16)), axis=1)
        acc = tl.sum(tl.reshape(acc, (BLOCK_R, 2, 8)), axis=1)
        acc = tl.sum(tl.reshape(acc, (BLOCK_R, 2, 4)), axis=1)
        acc = tl.sum(tl.reshape(acc, (BLOCK_R, 2, 2)), axis=1)
        return tl.sum(tl.reshape(acc, (BLOCK_R, 2, 1)), axis=1)

    @triton.jit
    def _logits(scores_ptr, valid_ptr, decay_ptr, base, batch, query, cols, row_ok, keys,
                inv_scale, fill, HAS_DECAY: tl.constexpr):
        """The softmax input of columns ``cols`` (-inf beyond the row), float32."""
        col_ok = cols[None, :] < keys
        ok = row_ok[:, None] & col_ok
        s = tl.load(scores_ptr + base[:, None] + cols[None, :], mask=ok, other=0.0)
        dtype = s.dtype
        x = s.to(tl.float32)
        if HAS_DECAY:  # H[i, j] from the table of phi^d, d = |i - j|
            distance = tl.abs(query[:, None] - cols[None, :])
            decay = tl.load(decay_ptr + distance, mask=ok, other=1.0).to(tl.float32)
            x = (x * decay).to(dtype).to(tl.float32)
        x = (x * inv_scale).to(dtype).to(tl.float32)
        valid = tl.load(valid_ptr + batch[:, None] * keys + cols[None, :], mask=ok, other=0)
        x = tl.where(valid != 0, x, fill)
        return tl.where(col_ok, x, float("-inf")), valid != 0, ok

    @triton.jit(do_not_specialize=["rows", "queries", "heads", "start", "iters"])
    def _softmax_weights_kernel(scores_ptr, valid_ptr, decay_ptr, soft_ptr, weights_ptr,
                                rows, queries, heads, start, keys, iters, inv_scale, fill,
                                HAS_DECAY: tl.constexpr, WRITE_SOFT: tl.constexpr,
                                LANES: tl.constexpr, BLOCK_R: tl.constexpr):
        row_ok, batch, query, base = _rows(rows, queries, heads, start, keys, BLOCK_R)
        lanes = tl.arange(0, LANES)
        # each lane's maximum over its keys, then the row's (order-free). Iterations
        # past the last key would only add exp(-inf) = 0 to the sums: skipped.
        best = tl.full([BLOCK_R, LANES], float("-inf"), tl.float32)
        for it in range(iters):
            x, _, _ = _logits(scores_ptr, valid_ptr, decay_ptr, base, batch, query,
                              it * LANES + lanes, row_ok, keys, inv_scale, fill, HAS_DECAY)
            best = tl.where(best > x, best, x)
        top = tl.max(best, axis=1)
        # each lane's sum in key order, then the lanes pairwise at 16, 8, 4, 2, 1
        acc = tl.zeros([BLOCK_R, LANES], tl.float32)
        for it in range(iters):
            x, _, _ = _logits(scores_ptr, valid_ptr, decay_ptr, base, batch, query,
                              it * LANES + lanes, row_ok, keys, inv_scale, fill, HAS_DECAY)
            acc += _exp(x - top[:, None])
        total = _lanes_total(acc, BLOCK_R)  # (BLOCK_R, 1)
        for it in range(iters):
            cols = it * LANES + lanes
            x, valid, ok = _logits(scores_ptr, valid_ptr, decay_ptr, base, batch, query,
                                   cols, row_ok, keys, inv_scale, fill, HAS_DECAY)
            soft = tl.math.div_rn(_exp(x - top[:, None]), total)
            offsets = base[:, None] + cols[None, :]
            if WRITE_SOFT:
                tl.store(soft_ptr + offsets, soft, mask=ok)
            weights = tl.where(valid, soft, 0.0)
            tl.store(weights_ptr + offsets, weights.to(weights_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _grad_times_soft(grad_ptr, soft_ptr, valid_ptr, base, batch, cols, row_ok, keys):
        """``T = G * P`` of columns ``cols`` in float32 (0 for padded keys and beyond the
        row), with ``P`` and the keys' validity."""
        ok = row_ok[:, None] & (cols[None, :] < keys)
        offsets = base[:, None] + cols[None, :]
        grad = tl.load(grad_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        soft = tl.load(soft_ptr + offsets, mask=ok, other=0.0)
        valid = tl.load(valid_ptr + batch[:, None] * keys + cols[None, :], mask=ok,
                        other=0) != 0
        return tl.where(valid, grad, 0.0) * soft, soft, valid, ok

    @triton.jit(do_not_specialize=["rows", "queries", "heads", "start", "iters"])
    def _softmax_backward_kernel(grad_ptr, soft_ptr, valid_ptr, decay_ptr, out_ptr, rows,
                                 queries, heads, start, keys, iters, inv_scale,
                                 HAS_DECAY: tl.constexpr, FMA: tl.constexpr,
                                 LANES: tl.constexpr, BLOCK_R: tl.constexpr):
        row_ok, batch, query, base = _rows(rows, queries, heads, start, keys, BLOCK_R)
        lanes = tl.arange(0, LANES)
        dtype = out_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK_R, LANES], tl.float32)  # each lane's sum in key order
        for it in range(iters):
            t, _, _, _ = _grad_times_soft(grad_ptr, soft_ptr, valid_ptr, base, batch,
                                          it * LANES + lanes, row_ok, keys)
            acc += t
        total = _lanes_total(acc, BLOCK_R)  # (BLOCK_R, 1)
        for it in range(iters):
            cols = it * LANES + lanes
            t, soft, valid, ok = _grad_times_soft(grad_ptr, soft_ptr, valid_ptr, base,
                                                  batch, cols, row_ok, keys)
            if FMA:
                g = tl.fma(-soft, total, t)
            else:
                g = t - soft * total
            g = tl.where(valid, g.to(dtype).to(tl.float32), 0.0)
            g = (g * inv_scale).to(dtype)
            if HAS_DECAY:  # H[i, j] from the table of phi^d, d = |i - j|
                distance = tl.abs(query[:, None] - cols[None, :])
                decay = tl.load(decay_ptr + distance, mask=ok, other=1.0).to(tl.float32)
                g = (g.to(tl.float32) * decay).to(dtype)
            tl.store(out_ptr + base[:, None] + cols[None, :], g, mask=ok)


def product_dtype(scores: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype in which the weights enter the next matrix product where the kernel
    reproduces the PyTorch operations (None where it does not apply): the autocast dtype
    for scores of that dtype under autocast, float32 for float32 scores without it."""
    device = scores.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return dtype if scores.dtype == dtype else None
    return torch.float32 if scores.dtype == torch.float32 else None


def applies(scores: torch.Tensor) -> bool:
    """Whether :func:`softmax_weights` replaces the PyTorch operations for ``scores``:
    CUDA with working Triton kernels, at most :data:`MAX_KEYS` keys, supported dtypes."""
    return (scores.is_cuda and scores.dim() == 4 and 0 < scores.size(-1) <= MAX_KEYS
            and product_dtype(scores) is not None
            and kernels.available(scores, 1))


def softmax_weights(
    scores: torch.Tensor, valid: torch.Tensor, start: int, decay: Optional[float],
    scale: float, with_soft: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Weights (N, H, C, L) of softmax HD-RepSSA from ``scores = Q_c K^T`` of query rows
    ``start .. start + C - 1`` and key validity ``valid`` (N, L), in the dtype of the next
    matrix product (:func:`product_dtype`); with ``with_soft`` also the float32 softmax
    before the padded keys are zeroed (what its backward reads)."""
    batch, heads, queries, keys = scores.shape
    dtype = product_dtype(scores)
    if dtype is None:  # a direct call in a combination the kernel does not reproduce
        dtype = torch.float32
    scores = scores.contiguous()
    weights = torch.empty(scores.shape, dtype=dtype, device=scores.device)
    soft = (torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
            if with_soft else None)
    rows = batch * heads * queries
    if rows == 0 or keys == 0:
        return weights, soft
    table = _decay_table(keys, decay, scores.dtype, scores.device, weights)
    inv_scale = _inverse(scale)
    _softmax_weights_kernel[(triton.cdiv(rows, _BLOCK_ROWS),)](
        scores, valid.contiguous().view(torch.uint8), table, soft if with_soft else weights,
        weights, rows, queries, heads, start, keys, triton.cdiv(keys, _LANES), inv_scale,
        float(torch.finfo(scores.dtype).min), HAS_DECAY=decay is not None,
        WRITE_SOFT=with_soft, LANES=_LANES, BLOCK_R=_BLOCK_ROWS, enable_fp_fusion=False)
    return weights, soft


def backward_applies(grad_weights: torch.Tensor, soft: torch.Tensor,
                     scores_dtype: torch.dtype) -> bool:
    """Whether :func:`softmax_weights_backward` replaces the PyTorch operations: CUDA with
    working Triton kernels, a float32 softmax of at most :data:`MAX_KEYS` keys (PyTorch's
    warp backward), the dtypes the forward kernel takes."""
    floats = (torch.float32, torch.bfloat16, torch.float16)
    return (soft.is_cuda and soft.dim() == 4 and 0 < soft.size(-1) <= MAX_KEYS
            and soft.dtype == torch.float32 and grad_weights.shape == soft.shape
            and grad_weights.dtype in floats and scores_dtype in floats
            and kernels.available(soft, 1))


def softmax_weights_backward(
    grad_weights: torch.Tensor, soft: torch.Tensor, valid: torch.Tensor, start: int,
    decay: Optional[float], scale: float, scores_dtype: torch.dtype, fma: bool = True,
) -> torch.Tensor:
    """Gradient (N, H, C, L), in ``scores_dtype``, of the scores ``Q_c K^T`` from that of
    the weights (``grad_weights``) and the float32 softmax ``soft`` that
    :func:`softmax_weights` wrote for the same rows. ``fma=False`` rounds ``P * sum``
    before the subtraction (for the GPU check that shows which one PyTorch does)."""
    batch, heads, queries, keys = soft.shape
    grad_weights, soft = grad_weights.contiguous(), soft.contiguous()
    out = torch.empty(soft.shape, dtype=scores_dtype, device=soft.device)
    rows = batch * heads * queries
    if rows == 0:
        return out
    table = _decay_table(keys, decay, scores_dtype, soft.device, out)
    _softmax_backward_kernel[(triton.cdiv(rows, _BLOCK_ROWS),)](
        grad_weights, soft, valid.contiguous().view(torch.uint8), table, out, rows, queries,
        heads, start, keys, triton.cdiv(keys, _LANES), _inverse(scale),
        HAS_DECAY=decay is not None, FMA=fma, LANES=_LANES, BLOCK_R=_BLOCK_ROWS,
        enable_fp_fusion=False)
    return out


def _decay_table(keys, decay, dtype, device, unused):
    """phi^d for every distance d, with the operations (and CUDA's exp) of ``decay_rows``
    (``unused``, any tensor, where there is no decay)."""
    if decay is None:
        return unused
    return (torch.exp(torch.arange(keys, dtype=torch.float32, device=device)
                      * math.log(decay)).to(dtype))


def _inverse(scale: float) -> float:
    """1 / scale in float32, as PyTorch's CUDA division by a Python number takes it."""
    return float(np.float32(1.0) / np.float32(scale))
