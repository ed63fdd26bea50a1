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
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = r < rows
        batch = r // (heads * queries)
        query = start + r % queries
        base = r.to(tl.int64) * keys
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
        acc = tl.sum(tl.reshape(acc, (BLOCK_R, 2, 16)), axis=1)
        acc = tl.sum(tl.reshape(acc, (BLOCK_R, 2, 8)), axis=1)
        acc = tl.sum(tl.reshape(acc, (BLOCK_R, 2, 4)), axis=1)
        acc = tl.sum(tl.reshape(acc, (BLOCK_R, 2, 2)), axis=1)
        total = tl.sum(tl.reshape(acc, (BLOCK_R, 2, 1)), axis=1)  # (BLOCK_R, 1)
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
    # phi^d for every distance d, with the operations (and CUDA's exp) of decay_rows
    table = (torch.exp(torch.arange(keys, dtype=torch.float32, device=scores.device)
                       * math.log(decay)).to(scores.dtype)
             if decay is not None else weights)
    inv_scale = float(np.float32(1.0) / np.float32(scale))
    _softmax_weights_kernel[(triton.cdiv(rows, _BLOCK_ROWS),)](
        scores, valid.contiguous().view(torch.uint8), table, soft if with_soft else weights,
        weights, rows, queries, heads, start, keys, triton.cdiv(keys, _LANES), inv_scale,
        float(torch.finfo(scores.dtype).min), HAS_DECAY=decay is not None,
        WRITE_SOFT=with_soft, LANES=_LANES, BLOCK_R=_BLOCK_ROWS, enable_fp_fusion=False)
    return weights, soft
