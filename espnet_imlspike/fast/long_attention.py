"""HD-RepSSA (Eq. 12-15) in memory linear in the sequence length, for long utterances.

The reference (:class:`~espnet_imlspike.attention.HDRepSSA`) materialises the
(N, H, L, L) map ``A' = (Q K^T) * H`` and autograd keeps several such maps per block:
quadratic memory. Two exact reformulations avoid it:

* Softmax (HD-RepSSA_S, Eq. 13 right): the map is built ``chunk`` query rows at a time
  with the reference's operations (``Q_c K^T``, ``* H``, ``/ sqrt(d_k)``, key padding,
  softmax, ``@ V_s``); backward rebuilds each chunk's softmax instead of keeping it
  (the recomputation of flash attention, in plain PyTorch, so no compiler is needed).
  Memory O(L d + chunk L); time still O(L^2 d).
* Linear (HD-RepSSA_L, Eq. 13 left): ``A' V_s = sum_j (q_i . k_j) phi^|i-j| v_j`` splits
  into the keys left and right of each chunk, whose decay factorises
  (``phi^(i-j) = phi^(i-b) phi^(b-j)``), so the far keys enter through (d, d) summaries
  ``sum_j phi^(.) k_j^T v_j`` per chunk, combined across chunks by a (n, n) decay
  matrix; keys inside a chunk use the explicit map. Memory O(L chunk + L d^2 / chunk),
  time linear in L. Without the HDM (RepSSA_L) it is ``Q (K^T V_s)``.

Both equal the explicit map up to float summation order (tested in float64).
"""

import math
from typing import Optional

import torch

from espnet_imlspike.fast import attention_kernels

# explicit maps above this many elements (per block) take the chunked paths
LONG_MAP_ELEMENTS = 1 << 25
CHUNK_ELEMENTS = 1 << 24


def use_long_path(batch: int, heads: int, length: int) -> bool:
    """Whether the explicit (N, H, L, L) map is large enough to switch paths."""
    return batch * heads * length * length > LONG_MAP_ELEMENTS


def decay_rows(rows: torch.Tensor, cols: torch.Tensor, phi: float, dtype) -> torch.Tensor:
    """``H[i, j] = phi^|i - j|`` for the given positions (Eq. 14), computed as
    :func:`~espnet_imlspike.attention.hierarchical_decay_mask` computes it."""
    exact = torch.promote_types(dtype, torch.float32)
    distance = (rows.to(exact)[:, None] - cols.to(exact)[None, :]).abs()
    return torch.exp(distance * math.log(phi)).to(dtype)


def _key_padding(valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, L): True at padded keys, for maps (B, H, queries, L)."""
    return ~valid[:, None, None, :]


def _softmax_chunk(q_c, k_t, start, valid, decay, scale, with_soft=False):
    """Softmax weights of the query rows from ``start`` (the reference's operations, or
    their fused kernel on CUDA, :mod:`.attention_kernels`) for keys ``k_t`` (N, H, d, L):
    the scores' dtype, the softmax (None unless ``with_soft`` or computed anyway) and the
    weights with padded keys zeroed."""
    scores = torch.matmul(q_c, k_t)
    if attention_kernels.applies(scores):
        weights, soft = attention_kernels.softmax_weights(scores, valid, start, decay,
                                                          scale, with_soft)
        return scores.dtype, soft, weights
    padding = _key_padding(valid)
    if decay is not None:
        cols = torch.arange(k_t.size(3), device=k_t.device)
        scores = scores * decay_rows(cols[start:start + q_c.size(2)], cols, decay,
                                     scores.dtype)
    scores = scores / scale
    scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    return scores.dtype, weights, weights.masked_fill(padding, 0.0)


class _ChunkedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, valid, decay, d_k, chunk):
        # the layouts torch.matmul would copy every chunk's operands into, made once:
        # a chunk of rows is then a view, and the products see the same layouts
        q, k, v = _contiguous(q, k, v)
        k_t = k.transpose(-2, -1).contiguous()
        out = []
        for start in range(0, q.size(2), chunk):
            _, _, weights = _softmax_chunk(q[:, :, start:start + chunk], k_t, start, valid,
                                           decay, math.sqrt(d_k))
            out.append(torch.matmul(weights, v))
        ctx.decay, ctx.d_k, ctx.chunk = decay, d_k, chunk
        ctx.autocast = (torch.is_autocast_enabled(q.device.type),
                        torch.get_autocast_dtype(q.device.type))
        ctx.save_for_backward(q, k, v, valid)
        return _concat(out)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, valid = ctx.saved_tensors
        (grad_out,) = _contiguous(grad_out)
        k_t, v_t = k.transpose(-2, -1).contiguous(), v.transpose(-2, -1).contiguous()
        enabled, dtype = ctx.autocast
        padding = _key_padding(valid)
        length = q.size(2)
        cols = torch.arange(length, device=q.device)
        scale = math.sqrt(ctx.d_k)
        grad_q, grad_k, grad_v = [], 0.0, 0.0  # k, v gradients summed in float32
        with torch.autocast(q.device.type, dtype=dtype, enabled=enabled):
            for start in range(0, length, ctx.chunk):
                stop = start + ctx.chunk
                rows, q_c, g_c = cols[start:stop], q[:, :, start:stop], grad_out[:, :, start:stop]
                scores_dtype, soft, weights = _softmax_chunk(q_c, k_t, start, valid, ctx.decay,
                                                             scale, with_soft=True)
                grad_v = _add(grad_v, torch.matmul(weights.transpose(-2, -1), g_c))
                grad_w = torch.matmul(g_c, v_t)
                if attention_kernels.backward_applies(grad_w, soft, scores_dtype):
                    grad_s = attention_kernels.softmax_weights_backward(
                        grad_w, soft, valid, start, ctx.decay, scale, scores_dtype)
                else:
                    grad_s = _softmax_backward(grad_w, soft, padding, rows, cols, ctx.decay,
                                               scale, scores_dtype)
                grad_q.append(torch.matmul(grad_s, k).to(q.dtype))
                grad_k = _add(grad_k, torch.matmul(grad_s.transpose(-2, -1), q_c))
        return (_concat(grad_q), grad_k.to(k.dtype), grad_v.to(v.dtype),
                None, None, None, None)


def _softmax_backward(grad_w, soft, padding, rows, cols, decay, scale, scores_dtype):
    """The scores' gradient of a chunk from the weights' (the reference's operations;
    :func:`.attention_kernels.softmax_weights_backward` fuses them on CUDA)."""
    grad_w = grad_w.to(soft.dtype).masked_fill(padding, 0.0)
    grad_s = torch._softmax_backward_data(grad_w, soft, -1, soft.dtype)
    grad_s = grad_s.to(scores_dtype).masked_fill(padding, 0.0) / scale
    if decay is not None:
        grad_s = grad_s * decay_rows(rows, cols, decay, grad_s.dtype)
    return grad_s


def _contiguous(*tensors):
    """Each (N, H, L, d) tensor with its rows contiguous (per-head views of an (N, L, D)
    tensor are not), so that a chunk of rows needs no copy in a matrix product."""
    return tuple(t.contiguous() for t in tensors)


def _concat(chunks):
    """The chunks joined along the length (one chunk, the usual case: no copy)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)


def _add(total, part: torch.Tensor) -> torch.Tensor:
    """Running sum over chunks in at least float32 (a single chunk is returned as is)."""
    if isinstance(total, float):
        return part
    return total.to(torch.promote_types(total.dtype, torch.float32)) + part


def chunked_softmax_context(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
    decay: Optional[float], d_k: int, chunk: Optional[int] = None,
) -> torch.Tensor:
    """``softmax((Q K^T * H) / sqrt(d_k)) V_s`` (N, H, L, d), padded keys weight 0,
    without keeping any (L, L) map for backward."""
    n, heads, length, _ = q.shape
    if chunk is None:
        chunk = max(16, min(length, CHUNK_ELEMENTS // max(1, n * heads * length)))
    return _ChunkedSoftmax.apply(q, k, v, valid, decay, d_k, chunk)


def _powers(exponents: torch.Tensor, phi: float, dtype) -> torch.Tensor:
    exact = torch.promote_types(dtype, torch.float32)
    return torch.exp(exponents.to(exact) * math.log(phi)).to(dtype)


def decayed_linear_context(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
    decay: Optional[float], linear_norm: str = "none", chunk: int = 64,
) -> torch.Tensor:
    """``(Q K^T * H) V_s`` (N, H, L, d) with padded keys excluded (Eq. 13 left, 15),
    divided by the number of valid keys for ``linear_norm="valid_keys"``."""
    n, heads, length, d = q.shape
    k = k * valid[:, None, :, None].to(k.dtype)
    if decay is None:
        context = torch.matmul(q, torch.matmul(k.transpose(-2, -1), v))
    else:
        context = _decayed(q, k, v, decay, min(chunk, length))
    if linear_norm == "valid_keys":
        keys = valid.sum(-1).clamp(min=1).to(context.dtype)
        context = context / keys[:, None, None, None]
    return context


def _decayed(q, k, v, phi, chunk):
    n, heads, length, d = q.shape
    blocks = -(-length // chunk)
    pad = blocks * chunk - length
    if pad:
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qc, kc, vc = (t.reshape(n, heads, blocks, chunk, t.size(-1)) for t in (q, k, v))
    local = torch.arange(chunk, device=q.device)
    dtype = q.dtype
    # keys in the same chunk: the explicit (chunk, chunk) map
    scores = torch.matmul(qc, kc.transpose(-2, -1)) * decay_rows(local, local, phi, dtype)
    context = torch.matmul(scores, vc)
    if blocks > 1:
        # far keys: per-chunk summaries, decayed to the next chunk's start (left keys)
        # or from the chunk's own start (right keys), combined across chunks
        to_end = _powers(chunk - local, phi, dtype)[:, None]
        from_start = _powers(local, phi, dtype)[:, None]
        left = torch.matmul((kc * to_end).transpose(-2, -1), vc)  # (n, h, B, d, d)
        right = torch.matmul((kc * from_start).transpose(-2, -1), vc)
        b = torch.arange(blocks, device=q.device)
        gap = (b[:, None] - b[None, :] - 1).to(torch.float32)  # b - m - 1
        lower = torch.where(gap >= 0, _powers(gap.clamp(min=0) * chunk, phi, dtype),
                            torch.zeros((), dtype=dtype, device=q.device))
        upper = lower.transpose(0, 1)
        before = torch.einsum("bm,nhmde->nhbde", lower, left)
        after = torch.einsum("bm,nhmde->nhbde", upper, right)
        context = context + torch.matmul(qc * from_start, before)
        context = context + torch.matmul(qc * _powers(chunk - local, phi, dtype)[:, None], after)
    return context.reshape(n, heads, blocks * chunk, -1)[:, :, :length]
