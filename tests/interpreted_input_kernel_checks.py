"""The Triton kernels of the input layer's first convolution (``fast/input_kernels.py``) in
Triton's interpreter.

Collected only by ``test_triton_kernels.py`` (a subprocess with ``TRITON_INTERPRET=1``,
whose plugin makes the interpreter's casts round as the GPU's do). Independent
computations: the convolution in float64 (aten's ``conv2d``) with the roundings of the
PyTorch operations it replaces (the convolution written in the map's dtype, the bias
added and rounded, the ReLU); float64 autograd of the same convolution for the weight and
bias gradients through the ReLU; and ESPnet's own module against the chunked layer
running the kernels.
"""

import gc

import pytest
import torch
from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding

from espnet_imlspike.encoders.common import CONV_SUBSAMPLING

from espnet_imlspike.fast import fast_mode, input_kernels, subsampling
from helpers import LiveBytes

CASES = [  # batch, input rows, features, channels, kernel, stride
    (2, 23, 20, 40, (3, 3), (2, 2)),  # conv2d, conv2d6, conv2d8's first layer
    (1, 9, 11, 130, (3, 3), (2, 2)),  # more channels than one block of the kernels
    (3, 12, 9, 24, (3, 3), (1, 1)),  # conv2d1's
    (2, 14, 13, 16, (5, 3), (3, 1)),  # other kernels and strides
]
ULP_BITS = {torch.bfloat16: 8, torch.float16: 11}  # significand bits: one ulp at 1.0


def inputs(batch, rows, freq, channels, kernel, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    big = torch.randn(batch, 1, rows + 5, freq, generator=generator).to(dtype)
    x = big[:, :, 3:3 + rows]  # a chunk's rows: a view into the batch's features
    weight = (torch.randn(channels, 1, *kernel, generator=generator) / 3).to(dtype)
    bias = (torch.randn(channels, generator=generator) / 4).to(dtype)
    return x, weight, bias


def first_map_of(case, dtype):
    """A case's rows, weights, bias and stride, and the kernel's map of them."""
    batch, rows, freq, channels, kernel, stride = case
    x, weight, bias = inputs(batch, rows, freq, channels, kernel, dtype)
    return x, weight, bias, stride, input_kernels.first_map(x, weight, bias, stride)


def rounded_like_pytorch(x, weight, bias, stride, dtype):
    """relu(round(round(conv) + bias)) with the convolution's sum exact (float64)."""
    conv = torch.nn.functional.conv2d(x.double(), weight.double(), None, stride)
    return (conv.to(dtype).double() + bias.double()[:, None, None]).to(dtype).relu()


def assert_within_one_ulp(got, expected, dtype):
    """Half-precision values equal up to one unit in the last place of ``expected``."""
    ulp = torch.where(expected.double() == 0, 2.0 ** -126,
                      expected.double().abs() * 2.0 ** (1 - ULP_BITS[dtype]))
    assert ((got.double() - expected.double()).abs() <= ulp).all()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_first_map_rounds_as_the_pytorch_operations(case, dtype):
    x, weight, bias, stride, y = first_map_of(case, dtype)
    expected = rounded_like_pytorch(x, weight, bias, stride, dtype)
    assert y.shape == expected.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert (y >= 0).all() and (y == 0).any() and (y > 0).any()
    if dtype == torch.float32:  # nine float32 products summed: within their rounding
        terms = torch.nn.functional.conv2d(x.double().abs(), weight.double().abs(), None,
                                           stride) + bias.double().abs()[:, None, None]
        assert ((y.double() - expected.double()).abs() <= terms * 2.0 ** -21).all()
    else:  # the float32 sum rounded to the map's dtype: the exact sum's rounding, or next
        assert_within_one_ulp(y, expected, dtype)
        assert (y == expected).double().mean() > 0.99


def test_first_map_keeps_nan_as_the_relu_does():
    x, weight, bias = inputs(1, 9, 9, 8, (3, 3), torch.float32)
    x = x.clone()
    x[0, 0, 4, 4] = float("nan")
    y = input_kernels.first_map(x, weight, bias, (2, 2))
    expected = torch.nn.functional.conv2d(x, weight, bias, 2).relu()
    assert torch.equal(y.isnan(), expected.isnan()) and y.isnan().any()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_first_map_backward_equals_float64_autograd(case, dtype):
    x, weight, bias, stride, y = first_map_of(case, dtype)
    generator = torch.Generator().manual_seed(7)
    grad = torch.randn(y.shape, generator=generator).to(dtype)
    grad = grad.contiguous(memory_format=torch.channels_last)
    grad_weight, grad_bias = input_kernels.first_map_backward(grad, y, x, weight, stride)
    leaves = [weight.double().requires_grad_(), bias.double().requires_grad_()]
    conv = torch.nn.functional.conv2d(x.double(), *leaves, stride)
    masked = torch.where(y.double() > 0, grad.double(), 0.0)  # through the ReLU
    expected = torch.autograd.grad(conv, leaves, masked)
    for got, exact in zip((grad_weight, grad_bias), expected):
        assert got.dtype == dtype and got.shape == exact.shape
        if dtype == torch.float32:
            torch.testing.assert_close(got.double(), exact, rtol=1e-5,
                                       atol=1e-6 * exact.abs().max().item())
        else:  # a float32 sum rounded once to the weights' dtype
            assert_within_one_ulp(got, exact.to(dtype), dtype)


def test_the_kernels_apply_only_on_cuda_to_their_dtypes():
    x, weight, _ = inputs(1, 9, 9, 8, (3, 3), torch.float32)
    assert not input_kernels.applies(x, weight)  # CPU: the PyTorch operations


@pytest.mark.parametrize("last_map", ["1", "0"], ids=["last_map_recomputed", "last_map_kept"])
@pytest.mark.parametrize("name", ["conv2d", "conv2d6", "conv2d8"])
def test_chunked_layer_with_the_kernels_equals_espnets_module(name, last_map, monkeypatch):
    """The chunked input layer in float32 with both kernels in place of the first layer's
    PyTorch operations (made to apply on the CPU here), against ESPnet's module; its
    backward recomputing the last map and keeping it."""
    monkeypatch.setenv("IMLSPIKE_RECOMPUTE_LAST_MAP", last_map)
    calls = {"first_map": 0, "first_map_backward": 0}

    def counted(function):
        def run(*args):
            calls[function.__name__] += 1
            return function(*args)
        return run

    monkeypatch.setattr(input_kernels, "_on_device", lambda x: True)  # the interpreter
    for function in (input_kernels.first_map, input_kernels.first_map_backward):
        monkeypatch.setattr(input_kernels, function.__name__, counted(function))
    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", 20_000)  # a few chunks
    monkeypatch.setattr(subsampling, "MIN_ROWS_PER_CHUNK", 1)
    torch.manual_seed(0)
    embed = CONV_SUBSAMPLING[name](40, 16, 0.0, PositionalEncoding(16, 0.0))
    xs = torch.randn(3, 61, 40)
    with fast_mode("1"):
        out = subsampling.subsample(embed, xs)
    reference, _ = embed(xs, None)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(reference)
    params = list(embed.parameters())
    expected = torch.autograd.grad((reference * weight).sum(), params)
    got = torch.autograd.grad((out * weight).sum(), params)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * a.abs().max().item())
    chunks = len(subsampling._Geometry(
        *zip(*[(c.kernel_size, c.stride, c.out_channels) for c in embed.conv[0::2]])
    ).chunks(3, 61, 40))
    assert chunks > 1
    # once per chunk in forward and in backward's recomputation; backward once per chunk
    assert calls == {"first_map": 2 * chunks, "first_map_backward": chunks}


class _Collected:
    """A kernel whose launch is followed by a garbage collection: the interpreter's launch
    leaves a reference cycle that holds its tensor arguments until the collector runs (a
    GPU launch holds none), which would count the previous chunk's maps as alive."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def collected(*args, **kwargs):
            try:
                return launch(*args, **kwargs)
            finally:
                gc.collect()
        return collected


@pytest.mark.parametrize("last_map", ["1", "0"], ids=["last_map_recomputed", "last_map_kept"])
def test_the_fused_backward_keeps_no_more_memory_alive_than_pytorchs(last_map, monkeypatch):
    """Backward of the chunked layer (two chunks): with the kernels, as with the PyTorch
    operations, two first maps of a chunk are alive at most (the map and its gradient),
    and the chunk's are freed before the next chunk's; the kernels add only their
    partial sums (<= 1 MiB, less than one first map here). A version that kept the first
    map and its gradient across chunks raised asr_train's peak reserved memory on AISHELL
    by 0.27 GiB."""
    monkeypatch.setenv("IMLSPIKE_RECOMPUTE_LAST_MAP", last_map)
    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", 400_000)
    monkeypatch.setattr(subsampling, "MIN_ROWS_PER_CHUNK", 1)
    monkeypatch.setattr(input_kernels, "_on_device", lambda x: True)  # the interpreter
    for kernel in ("_first_map_kernel", "_first_map_backward_kernel"):
        monkeypatch.setattr(input_kernels, kernel, _Collected(getattr(input_kernels, kernel)))
    batch, frames, freq, channels = 4, 160, 40, 96
    peaks = {}
    for name, switch in (("pytorch", "0"), ("kernels", "1")):
        monkeypatch.setenv("IMLSPIKE_INPUT_KERNELS", switch)
        torch.manual_seed(0)
        embed = CONV_SUBSAMPLING["conv2d"](freq, channels, 0.0, PositionalEncoding(channels, 0.0))
        with fast_mode("1"):
            loss = subsampling.subsample(embed, torch.randn(batch, frames, freq)).square().sum()
        tracker = LiveBytes()
        with tracker:
            loss.backward()
        peaks[name] = tracker.peak
    chunks = subsampling._Geometry(((3, 3), (3, 3)), ((2, 2), (2, 2)), (channels, channels)
                                   ).chunks(batch, frames, freq)
    first_rows = 2 * (chunks[0][1] - chunks[0][0]) + 1
    first_map = batch * channels * first_rows * ((freq - 3) // 2 + 1) * 4
    assert len(chunks) == 2 and first_map > input_kernels._PARTIAL_BYTES
    assert 0 < peaks["kernels"] <= peaks["pytorch"] + input_kernels._PARTIAL_BYTES, peaks


class _FailingLaunch:
    """A kernel whose launch fails, as Triton's compiler does on a GPU it cannot target."""

    def __init__(self, error=RuntimeError("ptxas fatal: bf16 matrix products need sm_80")):
        self.error = error

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise self.error
        return launch


@pytest.mark.parametrize("failing", ["_first_map_kernel", "_first_map_backward_kernel"])
def test_a_kernel_that_fails_leaves_the_pytorch_operations(failing, monkeypatch, caplog):
    """A first launch that fails is logged once and the layer goes on with the PyTorch
    operations for that device and dtype: the training does not stop."""
    monkeypatch.setattr(input_kernels, "_on_device", lambda x: True)  # the interpreter
    monkeypatch.setattr(input_kernels, "_failed", {})
    monkeypatch.setattr(input_kernels, failing, _FailingLaunch())
    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", 20_000)
    monkeypatch.setattr(subsampling, "MIN_ROWS_PER_CHUNK", 1)
    torch.manual_seed(0)
    embed = CONV_SUBSAMPLING["conv2d"](40, 16, 0.0, PositionalEncoding(16, 0.0))
    xs = torch.randn(3, 61, 40)
    with fast_mode("1"), caplog.at_level("WARNING"):
        out = subsampling.subsample(embed, xs)
        grads = torch.autograd.grad(out.square().sum(), list(embed.parameters()))
    reference, _ = embed(xs, None)
    expected = torch.autograd.grad(reference.square().sum(), list(embed.parameters()))
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "sm_80" in warnings[0].getMessage()
    assert not input_kernels.applies(torch.zeros(1, 1, 5, 5), torch.zeros(4, 1, 3, 3))


def test_running_out_of_memory_in_a_kernel_propagates_and_keeps_the_kernels(monkeypatch):
    monkeypatch.setattr(input_kernels, "_on_device", lambda x: True)  # the interpreter
    monkeypatch.setattr(input_kernels, "_failed", {})
    monkeypatch.setattr(input_kernels, "_first_map_kernel", _FailingLaunch(
        torch.cuda.OutOfMemoryError("CUDA out of memory")))
    x, weight, bias = inputs(1, 9, 9, 8, (3, 3), torch.float32)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        input_kernels.run_or_none(input_kernels.first_map, x, weight, bias, (2, 2))
    assert input_kernels.applies(x, weight)
