"""Triton kernels of the first convolution of ESPnet's conv subsampling (one input channel).

ESPnet's ``Conv2dSubsampling*`` layers begin with ``ReLU(Conv2d(1, C, 3, stride))`` over the
features: 9 multiply-adds per output value, so its cost is writing its map, the largest of
a training step (``C`` channels at half the frames and features: 2 GB in bf16 for a
LibriSpeech batch of 64 x 1536 frames). Through PyTorch the chunked input layer
(:mod:`.subsampling`) wrote and read that map five times per chunk in forward and again in
the recomputation of backward (cuDNN's convolution, the bias added by a separate
non-vectorised kernel, the ReLU), and in backward ran three more passes (the ReLU's
backward, the bias gradient's sum, the weight gradient's convolution).

* :func:`first_map`: the convolution, its bias and ReLU in one pass, writing the map
  channels-last (the layout the next convolution reads) with PyTorch's roundings: the
  convolution's sum in float32, rounded to the map's dtype (cuDNN writes the convolution in
  the computed dtype), the bias added to it as PyTorch's separate ``add_`` does (in
  float32, rounded), then the ReLU (NaN kept). The nine products are summed in the
  kernel's order, not cuDNN's (whose order is its own per algorithm), and in float32 where
  cuDNN uses TF32 for float32 inputs (``torch.backends.cudnn.allow_tf32``): equal to the
  module to rounding, as the chunked layer already is.
* :func:`first_map_backward`: from the gradient of the map (the next convolution's input
  gradient) and the map itself, the ReLU's mask, the weight and bias gradients in one
  pass: the products of the masked gradient and the nine input taps (and a tap of ones for
  the bias) as one matrix product per block of positions, summed in float32 into one row
  of partial sums per program, then over the programs in a fixed order (deterministic, as
  ESPnet's default ``cudnn_deterministic`` asks). Each call's sums are rounded to the
  weights' computed dtype, as the convolution's backward returns them per chunk.

Used on CUDA where the IMLS kernels are (:func:`~.kernels.available`; ``IMLSPIKE_TRITON=0``
turns all off, ``IMLSPIKE_INPUT_KERNELS=0`` these two only), for float32, bfloat16 and
float16 maps, when the features need no gradient. They compile at their first launch (not
ahead with the blocks' kernels: the input layer runs before the first CUDA-graph warm-up);
a launch that fails there (:func:`run_or_none`: a GPU or tool chain Triton cannot target)
is logged once and the PyTorch operations run from then on for that device and dtype. The
tests run both kernels in Triton's interpreter on the CPU.
"""

import logging
import os
from typing import Callable, Dict, Tuple

import torch

from espnet_imlspike.fast import kernels

FLOAT_TYPES = (torch.float32, torch.bfloat16, torch.float16)
_BLOCK_POSITIONS = 64
_BLOCK_CHANNELS = 128
_WARPS = 4
_BACKWARD_BLOCK_POSITIONS = 64
_BACKWARD_BLOCK_CHANNELS = 64
_BACKWARD_WARPS = 8
_TAPS_PADDED = 16  # the taps and the bias's tap of ones, padded to a matrix product's rows
_TARGET_PROGRAMS = 512
_PARTIAL_BYTES = 1 << 20
_failed: Dict[Tuple[torch.device, torch.dtype], str] = {}  # where a kernel failed: why

if kernels.triton is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def _position(p, height, width):
        """Utterance, row and column of flat output positions ``p``."""
        per_utterance = height * width
        b = p // per_utterance
        rest = p - b * per_utterance
        h = rest // width
        return b, h, rest - h * width

    @triton.jit(do_not_specialize=["positions", "height", "width"])
    def _first_map_kernel(x_ptr, w_ptr, b_ptr, out_ptr, positions, height, width,
                          x_stride_b, x_stride_t, x_stride_f, channels: tl.constexpr,
                          KT: tl.constexpr, KF: tl.constexpr, ST: tl.constexpr,
                          SF: tl.constexpr, TAPS: tl.constexpr, IEEE: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < positions
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = c < channels
        b, h, w = _position(p, height, width)
        base = b.to(tl.int64) * x_stride_b + (h * ST) * x_stride_t + (w * SF) * x_stride_f
        # the taps as a (positions, TAPS) matrix times the weights (TAPS, channels): one
        # matrix product (exact products of half-precision values, float32 sums)
        tap = tl.arange(0, TAPS)
        is_tap = tap < KT * KF
        taps = tl.load(x_ptr + base[:, None] + (tap // KF)[None, :] * x_stride_t
                       + (tap % KF)[None, :] * x_stride_f, mask=p_ok[:, None] & is_tap[None, :],
                       other=0.0)
        weights = tl.load(w_ptr + c[None, :] * (KT * KF) + tap[:, None],
                          mask=is_tap[:, None] & c_ok[None, :], other=0.0)
        if IEEE:  # float32 (or the interpreter, whose dot has no half precision)
            acc = tl.dot(taps.to(tl.float32), weights.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(taps, weights)
        dtype = out_ptr.dtype.element_ty
        bias = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        y = (acc.to(dtype).to(tl.float32) + bias[None, :]).to(dtype)
        y = tl.where(y < 0, 0.0, y).to(dtype)  # ReLU; NaN stays NaN, as torch's
        offsets = p[:, None].to(tl.int64) * channels + c[None, :]
        tl.store(out_ptr + offsets, y, mask=p_ok[:, None] & c_ok[None, :])

    @triton.jit(do_not_specialize=["positions", "height", "width", "per_program"])
    def _first_map_backward_kernel(g_ptr, y_ptr, x_ptr, partial_ptr, positions, height,
                                   width, per_program, x_stride_b, x_stride_t, x_stride_f,
                                   channels: tl.constexpr, KT: tl.constexpr,
                                   KF: tl.constexpr, ST: tl.constexpr, SF: tl.constexpr,
                                   TAPS: tl.constexpr, IEEE: tl.constexpr,
                                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = c < channels
        tap = tl.arange(0, TAPS)
        i, j = tap // KF, tap % KF
        is_tap, is_bias = tap < KT * KF, tap == KT * KF
        acc = tl.zeros([TAPS, BLOCK_C], dtype=tl.float32)
        first = tl.program_id(0) * per_program
        for start in range(first, first + per_program, BLOCK_P):
            p = start + tl.arange(0, BLOCK_P)
            p_ok = p < positions
            ok = p_ok[:, None] & c_ok[None, :]
            offsets = p[:, None].to(tl.int64) * channels + c[None, :]
            g = tl.load(g_ptr + offsets, mask=ok, other=0.0)
            y = tl.load(y_ptr + offsets, mask=ok, other=0.0)
            g = tl.where(y > 0, g.to(tl.float32), 0.0).to(g.dtype)  # the ReLU's backward
            b, h, w = _position(p, height, width)
            base = b.to(tl.int64) * x_stride_b + (h * ST) * x_stride_t + (w * SF) * x_stride_f
            taps = tl.load(x_ptr + base[None, :] + i[:, None] * x_stride_t
                           + j[:, None] * x_stride_f, mask=is_tap[:, None] & p_ok[None, :],
                           other=0.0).to(tl.float32)
            taps = tl.where(is_bias[:, None] & p_ok[None, :], 1.0, taps).to(g.dtype)
            if IEEE:  # float32 (or the interpreter, whose dot has no half precision)
                acc += tl.dot(taps.to(tl.float32), g.to(tl.float32), input_precision="ieee")
            else:  # half-precision inputs: exact products, float32 sums
                acc += tl.dot(taps, g)
        rows = tl.program_id(0) * TAPS + tap
        tl.store(partial_ptr + rows[:, None] * channels + c[None, :], acc,
                 mask=(tap <= KT * KF)[:, None] & c_ok[None, :])


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernels replace the first convolution for input rows ``x`` (B, 1, R, F)
    and its computed ``weight`` (C, 1, KT, KF): CUDA with working Triton kernels, one of
    :data:`FLOAT_TYPES` for both, at most 15 taps, ``IMLSPIKE_INPUT_KERNELS`` not ``0``,
    and no earlier failure of these kernels for that device and dtype."""
    return (os.environ.get("IMLSPIKE_INPUT_KERNELS") != "0"
            and x.dtype in FLOAT_TYPES and weight.dtype == x.dtype
            and x.dim() == 4 and x.size(1) == 1 and weight.size(1) == 1
            and weight.size(2) * weight.size(3) < _TAPS_PADDED
            and (x.device, x.dtype) not in _failed and _on_device(x))


def _on_device(x: torch.Tensor) -> bool:
    """CUDA, with the IMLS kernels working there (the tests replace this to run the
    kernels in Triton's interpreter)."""
    return x.is_cuda and kernels.available(x, 1)


def run_or_none(function: Callable, x: torch.Tensor, *args):
    """``function(x, *args)`` (:func:`first_map` or :func:`first_map_backward`), or None
    where it fails: Triton compiles a kernel variant at its first launch, and a GPU or tool
    chain it does not support (bf16 matrix products before compute capability 8.0, a
    missing C compiler) fails there. The failure is logged once; the caller then runs the
    PyTorch operations, as it does from then on for that device and dtype. Running out of
    memory is not such a failure: it propagates, and the kernels stay on."""
    try:
        return function(x, *args)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # any failure of Triton's compiler, assembler or launcher
        _failed[(x.device, x.dtype)] = f"{type(error).__name__}: {error}"
        logging.warning("Triton kernels of the input layer's first convolution unavailable on "
                        "%s for %s (%s: %s); using PyTorch operations "
                        "(IMLSPIKE_INPUT_KERNELS=0 skips this try)", x.device, x.dtype,
                        type(error).__name__, error)
        return None


def _ieee(x: torch.Tensor) -> bool:
    """Whether the matrix products take float32 operands (float32 maps; the interpreter,
    whose products have no half precision: exact products of half-precision values and
    float32 sums either way)."""
    return x.dtype == torch.float32 or not x.is_cuda


def _geometry(x: torch.Tensor, weight: torch.Tensor, stride: Tuple[int, int]):
    kt, kf = weight.shape[2:]
    height = (x.size(2) - kt) // stride[0] + 1
    width = (x.size(3) - kf) // stride[1] + 1
    strides = (x.stride(0), x.stride(2), x.stride(3))
    return kt, kf, height, width, strides


def first_map(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              stride: Tuple[int, int]) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, stride))`` (B, C, H, W), channels-last, in ``x``'s
    dtype, for rows ``x`` (B, 1, R, F) in their computed dtype."""
    kt, kf, height, width, strides = _geometry(x, weight, stride)
    channels = weight.size(0)
    out = torch.empty((x.size(0), channels, height, width), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    positions = x.size(0) * height * width
    if positions == 0:
        return out
    grid = (triton.cdiv(positions, _BLOCK_POSITIONS), triton.cdiv(channels, _BLOCK_CHANNELS))
    _first_map_kernel[grid](
        x, weight.contiguous(), bias.contiguous(), out, positions, height, width, *strides,
        channels=channels, KT=kt, KF=kf, ST=stride[0], SF=stride[1], TAPS=_TAPS_PADDED,
        IEEE=_ieee(x), BLOCK_P=_BLOCK_POSITIONS, BLOCK_C=_BLOCK_CHANNELS,
        num_warps=_WARPS)
    return out


def first_map_backward(grad: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                       weight: torch.Tensor, stride: Tuple[int, int]
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``weight`` (C, 1, KT, KF) and of the bias (C,), in the weight's dtype,
    from the gradient ``grad`` of the map ``y = first_map(x, weight, bias, stride)``
    (both channels-last, the map's dtype)."""
    kt, kf, height, width, strides = _geometry(x, weight, stride)
    channels, taps = weight.size(0), kt * kf
    positions = x.size(0) * height * width
    grad = grad.contiguous(memory_format=torch.channels_last)
    y = y.contiguous(memory_format=torch.channels_last)
    block_c = _BACKWARD_BLOCK_CHANNELS
    channel_blocks = triton.cdiv(channels, block_c)
    # partial sums kept within the caching allocator's small blocks (<= 1 MiB), so that
    # they never take a piece of a freed map's block
    rows = max(1, _PARTIAL_BYTES // (_TAPS_PADDED * channels * 4))
    wanted = max(1, min(_TARGET_PROGRAMS // channel_blocks, rows))
    per_program = triton.cdiv(max(positions, 1), wanted)
    per_program = (triton.cdiv(per_program, _BACKWARD_BLOCK_POSITIONS)
                   * _BACKWARD_BLOCK_POSITIONS)
    programs = triton.cdiv(max(positions, 1), per_program)
    partial = torch.zeros((programs * _TAPS_PADDED, channels), dtype=torch.float32,
                          device=x.device)
    _first_map_backward_kernel[(programs, channel_blocks)](
        grad, y, x, partial, positions, height, width, per_program, *strides,
        channels=channels, KT=kt, KF=kf, ST=stride[0], SF=stride[1], TAPS=_TAPS_PADDED,
        IEEE=_ieee(x), BLOCK_P=_BACKWARD_BLOCK_POSITIONS, BLOCK_C=block_c,
        num_warps=_BACKWARD_WARPS)
    total = partial.view(programs, _TAPS_PADDED, channels).sum(0)
    grad_weight = total[:taps].t().reshape(weight.shape).to(weight.dtype)
    return grad_weight, total[taps].to(weight.dtype)
