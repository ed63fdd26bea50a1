"""The Triton kernel of softmax HD-RepSSA's weights (Eq. 13-15) in Triton's interpreter.

Collected only by ``test_triton_kernels.py`` (a subprocess with ``TRITON_INTERPRET=1``).
Two independent computations: the arithmetic of PyTorch's CUDA operations written out
step by step in numpy (the reference's decay factors, then the scale and padding
roundings and the warp softmax's order of summation), which the kernel must equal bit for
bit with the interpreter's exp; and the same weights in float64, which it must approach
to float32 rounding.
"""

import math

import numpy as np
import pytest
import torch

from espnet_imlspike.fast import attention_kernels
from espnet_imlspike.fast.long_attention import decay_rows

CASES = [  # batch, heads, keys, queries (chunk), start
    (2, 2, 45, 45, 0),
    (1, 3, 5, 5, 0),
    (2, 1, 32, 32, 0),
    (1, 2, 300, 40, 120),
    (3, 1, 1, 1, 0),
]


def inputs(batch, heads, keys, queries, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scores = (torch.randn(batch, heads, queries, keys, generator=generator) * 20).to(dtype)
    valid = torch.ones(batch, keys, dtype=torch.bool)
    valid[0, max(1, keys * 2 // 3):] = False  # padded keys
    if batch > 2:
        valid[2] = False  # an utterance of length 0 (a padded bucket entry)
    return scores, valid


def _round(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """float32 values rounded to ``dtype`` (to nearest even, as CUDA casts), as float32."""
    return torch.from_numpy(values.astype(np.float32)).to(dtype).float().numpy()


def cuda_order_weights(scores, valid, start, decay, scale, product_dtype):
    """The PyTorch operations' arithmetic on CUDA, element by element in numpy."""
    dtype = scores.dtype
    s = scores.float().numpy()
    batch, heads, queries, keys = s.shape
    if decay is not None:  # the reference's decay factors (PyTorch's exp, as on CUDA)
        cols = torch.arange(keys)
        factor = decay_rows(cols[start:start + queries], cols, decay, dtype).float().numpy()
        s = _round(s * factor, dtype)
    s = _round(s * (np.float32(1.0) / np.float32(scale)), dtype)
    keep = valid.numpy()[:, None, None, :]
    x = np.where(keep, s, np.float32(torch.finfo(dtype).min)).astype(np.float32)
    width = max(32, 1 << (keys - 1).bit_length())
    padded = np.full(x.shape[:-1] + (width,), -np.inf, dtype=np.float32)
    padded[..., :keys] = x
    lanes = padded.reshape(x.shape[:-1] + (width // 32, 32))  # [..., iteration, lane]
    top = padded.max(-1, keepdims=True)
    e = np.exp(padded - top).astype(np.float32)
    per_lane = np.zeros(x.shape[:-1] + (32,), dtype=np.float32)
    for it in range(lanes.shape[-2]):  # each lane sums its keys in order
        per_lane = per_lane + e.reshape(lanes.shape)[..., it, :]
    for half in (16, 8, 4, 2, 1):  # the lanes at distance 16, 8, 4, 2, 1
        per_lane = per_lane[..., :half] + per_lane[..., half:2 * half]
    soft = (e[..., :keys] / per_lane).astype(np.float32)
    weights = np.where(keep, soft, np.float32(0.0))
    return (torch.from_numpy(soft),
            torch.from_numpy(weights.astype(np.float32)).to(product_dtype))


@pytest.mark.parametrize("batch,heads,keys,queries,start", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("decay", [0.96875, None])
def test_weights_equal_the_cuda_arithmetic(batch, heads, keys, queries, start, dtype, decay):
    scores, valid = inputs(batch, heads, keys, queries, dtype)
    scale = math.sqrt(24)  # 1 / sqrt(24) is not exact in float32: its rounding matters
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        product = attention_kernels.product_dtype(scores)
        weights, soft = attention_kernels.softmax_weights(scores, valid, start, decay, scale,
                                                          with_soft=True)
    assert product == dtype and weights.dtype == dtype and soft.dtype == torch.float32
    expected_soft, expected = cuda_order_weights(scores, valid, start, decay, scale, dtype)
    assert torch.equal(soft, expected_soft)
    assert torch.equal(weights, expected)
    padded = ~valid[:, None, None, :].expand_as(weights)
    assert (weights[padded] == 0).all()


def test_weights_approach_the_float64_softmax():
    scores, valid = inputs(2, 2, 77, 77, torch.float32, seed=1)
    decay, scale = 0.984375, 8.0
    _, soft = attention_kernels.softmax_weights(scores, valid, 0, decay, scale, True)
    distance = (torch.arange(77.0)[:, None] - torch.arange(77.0)[None, :]).abs()
    logits = scores.double() * decay ** distance.double() / scale
    logits = logits.masked_fill(~valid[:, None, None, :], -math.inf)
    exact = torch.softmax(logits, -1)
    assert torch.allclose(soft.double(), exact, rtol=1e-5, atol=1e-7)


def test_the_kernel_applies_only_where_it_reproduces_pytorch():
    scores = torch.zeros(1, 1, 4, 4)
    assert not attention_kernels.applies(scores)  # CPU: the PyTorch operations
    assert attention_kernels.product_dtype(scores) == torch.float32
    assert attention_kernels.product_dtype(scores.bfloat16()) is None  # softmax in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention_kernels.product_dtype(scores.bfloat16()) == torch.bfloat16
        assert attention_kernels.product_dtype(scores) is None


def backward_inputs(batch, heads, keys, queries, start, dtype, decay, seed=0):
    """A softmax from the forward kernel and a gradient of the weights in the dtype the
    product ``dO V^T`` gives."""
    scores, valid = inputs(batch, heads, keys, queries, dtype, seed)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        _, soft = attention_kernels.softmax_weights(scores, valid, start, decay, 5.0, True)
    generator = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn(scores.shape, generator=generator).to(dtype)
    return grad, soft, valid


def cuda_order_backward(grad, soft, valid, start, decay, scale, dtype):
    """The reference backward's arithmetic on CUDA, element by element in numpy: padded
    keys' gradient 0, ``T = G * P``, each lane's sum of ``T`` in key order and the lanes
    pairwise (``softmax_warp_backward``), ``T - P * sum`` rounded once, cast, padding,
    scale, decay."""
    batch, heads, queries, keys = soft.shape
    keep = valid.numpy()[:, None, None, :]
    p = soft.numpy()
    t = (np.where(keep, grad.float().numpy(), np.float32(0.0)) * p).astype(np.float32)
    width = max(32, 1 << (keys - 1).bit_length())
    padded = np.zeros(t.shape[:-1] + (width,), dtype=np.float32)
    padded[..., :keys] = t
    lanes = padded.reshape(t.shape[:-1] + (width // 32, 32))
    per_lane = np.zeros(t.shape[:-1] + (32,), dtype=np.float32)
    for it in range(lanes.shape[-2]):
        per_lane = per_lane + lanes[..., it, :]
    for half in (16, 8, 4, 2, 1):
        per_lane = per_lane[..., :half] + per_lane[..., half:2 * half]
    # fma(-P, sum, T): the product exact in float64, one rounding (as the GPU's fma and
    # triton_interpreter.py's emulation of it)
    g = (t.astype(np.float64) - p.astype(np.float64) * per_lane).astype(np.float32)
    g = np.where(keep, _round(g, dtype), np.float32(0.0))
    g = _round(g * (np.float32(1.0) / np.float32(scale)), dtype)
    if decay is not None:
        cols = torch.arange(keys)
        factor = decay_rows(cols[start:start + queries], cols, decay, dtype).float().numpy()
        g = _round(g * factor, dtype)
    return torch.from_numpy(g.astype(np.float32)).to(dtype)


@pytest.mark.parametrize("batch,heads,keys,queries,start", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("decay", [0.96875, None])
def test_backward_equals_the_cuda_arithmetic(batch, heads, keys, queries, start, dtype, decay):
    """Bit for bit in the interpreter (its ``fma`` made to round once, as the GPU's, by
    triton_interpreter.py); that PyTorch's CUDA kernel fuses ``T - P * sum`` so is shown
    by the GPU check (bench/fast_checks.py), which runs both variants."""
    grad, soft, valid = backward_inputs(batch, heads, keys, queries, start, dtype, decay)
    scale = math.sqrt(24)
    out = attention_kernels.softmax_weights_backward(grad, soft, valid, start, decay, scale,
                                                     dtype)
    expected = cuda_order_backward(grad, soft, valid, start, decay, scale, dtype)
    assert out.dtype == dtype and torch.equal(out, expected)
    assert (out[~valid[:, None, None, :].expand_as(out)] == 0).all()


def test_backward_approaches_the_float64_gradient():
    """Against autograd of the weights in float64 (an independent computation)."""
    batch, heads, keys, start, decay, scale = 2, 2, 77, 0, 0.984375, 8.0
    grad, soft, valid = backward_inputs(batch, heads, keys, keys, start, torch.float32, decay,
                                        seed=2)
    scores = torch.randn(batch, heads, keys, keys, generator=torch.Generator().manual_seed(3),
                         dtype=torch.float64, requires_grad=True)
    distance = (torch.arange(77.0)[:, None] - torch.arange(77.0)[None, :]).abs()
    factor = decay ** distance.double()
    logits = (scores * factor / scale).masked_fill(~valid[:, None, None, :], -math.inf)
    weights = torch.softmax(logits, -1).masked_fill(~valid[:, None, None, :], 0.0)
    weights.backward(grad.double())
    with torch.no_grad():  # the kernel's softmax from these scores, in float32
        _, soft = attention_kernels.softmax_weights(scores.float(), valid, start, decay, scale,
                                                    True)
    out = attention_kernels.softmax_weights_backward(grad, soft, valid, start, decay, scale,
                                                     torch.float32)
    assert torch.allclose(out.double(), scores.grad, rtol=1e-4, atol=1e-6)
