"""Triton kernels of IMLS firing: each neuron's element-wise passes fused (CUDA).

On the PyTorch path (:mod:`.firing`) one IMLS neuron in training costs about twenty
kernels: the masked channel maximum (masked copy, reduction, casts), the running-statistic
update (Eq. 11, eight tiny kernels), the firing (divide, multiply, clip, compare, floor)
and the byte packing for backward; its backward three more passes. Here they are four
kernels with the same arithmetic:

* :func:`partial_max`: the per-channel maximum over valid rows (Eq. 10), NaN read as
  +inf (as :meth:`~espnet_imlspike.neurons.InputAwareMultiLevelSpikeNeuron.batch_max`
  maps it), one row of partial maxima per program;
* :func:`finish_threshold`: the partial maxima reduced, floored at ``eps``, and the
  running statistic updated (Eq. 11; a batch with a non-finite maximum is skipped) in one
  program, without a host synchronisation;
* :func:`fire`: ``floor(clip(x / Lambda * T, 0, T))`` with the reference's roundings
  (``x / Lambda`` and ``* T`` each rounded to ``x``'s dtype, correctly rounded division),
  writing the spikes (in the dtype the next layer computes in: counts are exact integers)
  and, for backward, one byte per element: the count in the low 7 bits, the STE mask of
  Eq. 8 in the top bit (so ``T <= 127`` here; larger ``T`` keeps the PyTorch path);
* :func:`fire_backward`: ``dL/dx = [0 <= u <= T] dL/ds * T / Lambda`` with the
  reference's roundings, and the spike counts in the dtype of the weight gradients.

Spikes, masks and gradients are bit-identical to the PyTorch path; the running
statistic uses the fused multiply-add that PyTorch's CUDA ``lerp`` compiles to.
Used on CUDA when Triton imports (``IMLSPIKE_TRITON=0`` turns it off). On the CPU the
tests run these kernels in Triton's interpreter (``TRITON_INTERPRET=1`` with
``IMLSPIKE_TRITON=1``).
"""

import contextlib
import logging
import os
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a torch build without Triton: the PyTorch path only
    triton = None

MAX_TIMESTEPS = 127  # count in 7 bits, STE mask in the 8th
INSIDE_BIT = 128
FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
_ROW_BLOCK = 32
_MIN_ROWS_PER_PROGRAM = 128  # bounds the partial rows one program reduces after
_MAX_ROWS_PER_PROGRAM = 1024
_TARGET_PROGRAMS = 512  # enough programs to fill a GPU's SMs several times
_ELEMENTS_PER_PROGRAM = 2048


_working: Dict[torch.device, bool] = {}


def available(x: torch.Tensor, timesteps: int) -> bool:
    """Whether the kernels run for input ``x``: CUDA (or the interpreter in tests),
    Triton importable and working there, a float dtype and ``T <= 127``."""
    if torch.compiler.is_compiling():
        return False
    if x.dtype not in FLOAT_TYPES or not 1 <= timesteps <= MAX_TIMESTEPS:
        return False
    if x.is_cuda:
        return may_work(x.device) and kernels_work(x.device)
    return (triton is not None and os.environ.get("IMLSPIKE_TRITON") == "1"
            and os.environ.get("TRITON_INTERPRET") == "1")


def kernels_work(device: torch.device) -> bool:
    """Whether a first kernel compiles and runs on ``device`` (tried once per device).

    Triton builds its launcher with the system's C compiler at first use; where that
    fails (no compiler, an unsupported GPU), IMLS firing keeps the PyTorch operations
    (same results) and says so once, instead of stopping the training.
    """
    if device not in _working:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return False  # never try inside a CUDA-graph capture (its warm-up tries)
        try:
            probe(device)
            _working[device] = True
        except Exception as error:  # any failure of Triton's tool chain
            logging.warning("Triton kernels of IMLS firing unavailable on %s (%s: %s); "
                            "using PyTorch operations (IMLSPIKE_TRITON=0 skips this try)",
                            device, type(error).__name__, error)
            _working[device] = False
    return _working[device]


def may_work(device: torch.device) -> bool:
    """Whether the kernels may run on ``device``: CUDA, Triton on and not found failing
    there (without the first test :func:`kernels_work` makes)."""
    return (triton is not None and os.environ.get("IMLSPIKE_TRITON", "auto") != "0"
            and device.type == "cuda" and _working.get(device, True))


def probe(device: torch.device) -> None:
    """The launch :func:`kernels_work` tries (one element fired)."""
    fire(torch.ones(1, 1, device=device), torch.ones(1, device=device), 1)


@contextlib.contextmanager
def assumed_working(device: torch.device) -> Iterator[None]:
    """Inside, the kernels count as working on ``device`` unless already found not to;
    the test stays pending (for :mod:`.compile_ahead`, whose launches are only recorded)."""
    pending = device not in _working
    if pending:
        _working[device] = True
    try:
        yield
    finally:
        if pending:
            _working.pop(device, None)


if triton is not None:

    # Channel counts are compile-time constants (a model has two or three) and row counts
    # are not specialised, so new batch shapes never trigger a compilation. Element counts
    # (rows x channels) stay specialised: a multiple of 16 for any usual channel count,
    # which the vectorised loads of the element-wise kernels need (unspecialised, the
    # firing kernels ran 2-3x slower on an H200).
    @triton.jit(do_not_specialize=["rows", "rows_per_program"])
    def _partial_max_kernel(x_ptr, valid_ptr, out_ptr, rows, rows_per_program,
                            channels: tl.constexpr, HAS_VALID: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < channels
        best = tl.full([BLOCK_C], float("-inf"), tl.float32)
        first = tl.program_id(0) * rows_per_program
        for start in range(first, first + rows_per_program, BLOCK_R):
            r = start + tl.arange(0, BLOCK_R)
            row_ok = r < rows
            if HAS_VALID:
                row_ok = row_ok & (tl.load(valid_ptr + r, mask=row_ok, other=0) != 0)
            offsets = r[:, None].to(tl.int64) * channels + cols[None, :]
            x = tl.load(x_ptr + offsets, mask=row_ok[:, None] & col_ok[None, :],
                        other=float("-inf")).to(tl.float32)
            x = tl.where(x != x, float("inf"), x)  # NaN -> +inf: survives the maximum
            best = tl.maximum(best, tl.max(x, axis=0))
        tl.store(out_ptr + tl.program_id(0) * channels + cols, best, mask=col_ok)

    @triton.jit(do_not_specialize=["groups"])
    def _finish_threshold_kernel(part_ptr, groups, eps, peak_ptr, running_ptr,
                                 tracked_ptr, momentum, one_minus_momentum,
                                 channels: tl.constexpr, UPDATE: tl.constexpr,
                                 SMALL_WEIGHT: tl.constexpr, BLOCK_C: tl.constexpr):
        bad = tl.zeros([BLOCK_C], tl.int32)
        for start in range(0, channels, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            ok = cols < channels
            best = tl.full([BLOCK_C], float("-inf"), tl.float32)
            for g in range(groups):
                part = tl.load(part_ptr + g * channels + cols, mask=ok, other=float("-inf"))
                best = tl.maximum(best, part)
            best = tl.maximum(best, eps)
            tl.store(peak_ptr + cols, best, mask=ok)
            bad += (ok & (best == float("inf"))).to(tl.int32)
        if UPDATE:
            tl.debug_barrier()  # the peaks stored above are read back below
            usable = tl.sum(bad, axis=0) == 0
            tracked = tl.load(tracked_ptr)
            first = tracked == 0
            for start in range(0, channels, BLOCK_C):
                cols = start + tl.arange(0, BLOCK_C)
                ok = cols < channels
                stat = tl.load(peak_ptr + cols, mask=ok, other=1.0)
                old = tl.load(running_ptr + cols, mask=ok, other=1.0)
                diff = stat - old
                # torch.lerp's two forms, as its CUDA kernel compiles them (fused mul-add)
                if SMALL_WEIGHT:
                    lerped = tl.fma(diff, momentum, old)
                else:
                    lerped = tl.fma(-diff, one_minus_momentum, stat)
                new = tl.where(first, stat, lerped)
                tl.store(running_ptr + cols, tl.where(usable, new, old), mask=ok)
            tl.store(tracked_ptr, tracked + usable.to(tl.int64))

    @triton.jit
    def _fire_kernel(x_ptr, peak_ptr, spikes_ptr, code_ptr, numel, timesteps, eps,
                     channels: tl.constexpr, WITH_CODE: tl.constexpr,
                     FROM_RUNNING: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offsets < numel
        x = tl.load(x_ptr + offsets, mask=ok, other=0.0)
        dtype = x.dtype
        peak = tl.load(peak_ptr + offsets % channels, mask=ok, other=1.0)
        if FROM_RUNNING:  # evaluation: silent (+inf) where the statistic is not above eps
            peak = tl.where(peak > eps, peak, float("inf"))
        peak = peak.to(dtype).to(tl.float32)  # peak.to(x.dtype)
        ratio = tl.math.div_rn(x.to(tl.float32), peak).to(dtype).to(tl.float32)
        u = (ratio * timesteps).to(dtype).to(tl.float32)
        inside = (u >= 0.0) & (u <= timesteps)  # False for NaN, as clamp(u) == u
        clipped = tl.where(u < 0.0, 0.0, tl.where(u > timesteps, timesteps, u))
        spikes = tl.floor(clipped)
        tl.store(spikes_ptr + offsets, spikes.to(spikes_ptr.dtype.element_ty), mask=ok)
        if WITH_CODE:
            count = tl.where(spikes == spikes, spikes, 0.0).to(tl.uint8)
            code = count | tl.where(inside, 128, 0).to(tl.uint8)
            tl.store(code_ptr + offsets, code, mask=ok)

    @triton.jit
    def _fire_backward_kernel(grad_ptr, code_ptr, peak_ptr, grad_x_ptr, counts_ptr, numel,
                              timesteps, channels: tl.constexpr, WITH_COUNTS: tl.constexpr,
                              BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offsets < numel
        dtype = grad_x_ptr.dtype.element_ty
        grad = tl.load(grad_ptr + offsets, mask=ok, other=0.0).to(dtype).to(tl.float32)
        code = tl.load(code_ptr + offsets, mask=ok, other=0)
        grad = tl.where(code >= 128, grad, 0.0)
        scaled = (grad * timesteps).to(dtype).to(tl.float32)
        peak = tl.load(peak_ptr + offsets % channels, mask=ok, other=1.0)
        peak = peak.to(dtype).to(tl.float32)
        tl.store(grad_x_ptr + offsets, tl.math.div_rn(scaled, peak).to(dtype), mask=ok)
        if WITH_COUNTS:
            counts = (code & 127).to(tl.float32)
            tl.store(counts_ptr + offsets, counts.to(counts_ptr.dtype.element_ty), mask=ok)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(-1, x.size(-1))


def partial_max(x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-channel maxima of ``x`` (..., C) over the rows where ``valid`` (...) is True,
    as float32 partials (G, C): their maximum over G is the batch maximum (NaN as +inf,
    -inf where no row is valid)."""
    rows = _flat(x)
    count, channels = rows.shape
    block_c = min(128, triton.next_power_of_2(channels))
    column_blocks = triton.cdiv(channels, block_c)
    per_program = triton.cdiv(count * column_blocks, _TARGET_PROGRAMS)
    per_program = min(_MAX_ROWS_PER_PROGRAM,
                      max(_MIN_ROWS_PER_PROGRAM,
                          triton.cdiv(per_program, _ROW_BLOCK) * _ROW_BLOCK))
    groups = max(1, triton.cdiv(count, per_program))
    out = torch.empty(groups, channels, dtype=torch.float32, device=x.device)
    flags = (valid.reshape(-1).contiguous().view(torch.uint8) if valid is not None
             else rows)  # any pointer: not read without HAS_VALID
    _partial_max_kernel[(groups, column_blocks)](
        rows, flags, out, count, per_program, channels=channels,
        HAS_VALID=valid is not None, BLOCK_R=_ROW_BLOCK, BLOCK_C=block_c)
    return out


def finish_threshold(partials: torch.Tensor, eps: float, running_max: Optional[torch.Tensor],
                     num_batches_tracked: Optional[torch.Tensor],
                     momentum: float = 0.1) -> torch.Tensor:
    """The threshold ``Lambda`` (C,) from :func:`partial_max`'s partials (floored at
    ``eps``), and, given the buffers, Eq. 11's update of ``running_max`` (float32) and
    ``num_batches_tracked`` in place, skipped for a batch with a non-finite maximum."""
    groups, channels = partials.shape
    peak = torch.empty(channels, dtype=torch.float32, device=partials.device)
    update = running_max is not None
    one_minus = float(np.float32(1.0) - np.float32(momentum))  # (1 - w) in float, as lerp
    _finish_threshold_kernel[(1,)](
        partials, groups, eps, peak,
        running_max if update else peak, num_batches_tracked if update else peak,
        momentum, one_minus, channels=channels, UPDATE=update, SMALL_WEIGHT=abs(momentum) < 0.5,
        BLOCK_C=min(1024, triton.next_power_of_2(channels)))
    return peak


def fire(x: torch.Tensor, peak: torch.Tensor, timesteps: int,
         spike_dtype: Optional[torch.dtype] = None, with_code: bool = False,
         running_eps: Optional[float] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Spikes ``floor(clip(x / peak * T, 0, T))`` in ``spike_dtype`` (default ``x``'s)
    and, with ``with_code``, the byte per element that backward needs. With
    ``running_eps``, ``peak`` is the running statistic and the evaluation threshold is
    taken from it in the kernel (``+inf`` where it is not above ``running_eps``, as
    :meth:`~espnet_imlspike.neurons.InputAwareMultiLevelSpikeNeuron.eval_threshold`)."""
    source = x.contiguous()
    spikes = torch.empty(source.shape, dtype=spike_dtype or x.dtype, device=x.device)
    code = torch.empty(source.shape, dtype=torch.uint8, device=x.device) if with_code else None
    numel = source.numel()
    if numel == 0:
        return spikes, code
    _fire_kernel[(triton.cdiv(numel, _ELEMENTS_PER_PROGRAM),)](
        source, peak, spikes, code if with_code else spikes, numel, float(timesteps),
        float(running_eps or 0.0), channels=x.size(-1), WITH_CODE=with_code,
        FROM_RUNNING=running_eps is not None, BLOCK=_ELEMENTS_PER_PROGRAM)
    return spikes, code


def fire_backward(grad: torch.Tensor, code: torch.Tensor, peak: torch.Tensor, timesteps: int,
                  x_dtype: torch.dtype, counts_dtype: Optional[torch.dtype] = None
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``dL/dx`` in ``x_dtype`` from ``dL/ds`` and the forward's bytes; with
    ``counts_dtype``, the spike counts in that dtype too (for the weight gradients)."""
    grad = grad.contiguous()
    grad_x = torch.empty(code.shape, dtype=x_dtype, device=code.device)
    counts = (torch.empty(code.shape, dtype=counts_dtype, device=code.device)
              if counts_dtype is not None else None)
    numel = code.numel()
    if numel == 0:
        return grad_x, counts
    _fire_backward_kernel[(triton.cdiv(numel, _ELEMENTS_PER_PROGRAM),)](
        grad, code, peak, grad_x, counts if counts is not None else grad_x, numel,
        float(timesteps), channels=code.size(-1), WITH_COUNTS=counts is not None,
        BLOCK=_ELEMENTS_PER_PROGRAM)
    return grad_x, counts
