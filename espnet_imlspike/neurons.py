"""Spiking neuron layers of IML-Spikeformer (paper Sec. III-A and IV).

Every neuron derives from :class:`SpikingNeuron` and has one interface,
``neuron(x, valid) -> spikes``:

* :class:`MultiLevelSpikeNeuron` (MLS, Eq. 7-8): the T-step firing of an IF neuron
  with soft reset that receives its input only at the first step, simulated in a single
  step as the multi-level spike ``s = floor(clip(v / theta, 0, T))``.
* :class:`InputAwareMultiLevelSpikeNeuron` (IMLS, Eq. 10-11): MLS with a channel-wise
  threshold taken from the batch maximum of the input (valid frames only) in training
  and from its running average in evaluation.
* :class:`~espnet_imlspike.neurons_multistep.MultiStepIFNeuron`: the iterative T-step
  IF/LIF neuron with soft reset (Eq. 1-3), trained with BPTT and a surrogate gradient;
  the baseline firing (its own module).

Tensors are ``(N, L, C)`` with channels last; ``valid`` is a ``(N, L)`` bool mask of
unpadded frames. Multi-level spikes are returned as integer spike counts in ``{0..T}``
(no per-channel rescaling), so every synaptic layer that consumes them can be run as T
binary spike trains without folding any scale into its weights (Eq. 9).
"""

import contextlib
import logging
import os
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from typeguard import typechecked

from espnet_imlspike.errors import OptionError

FIRING_TYPES = ("imls", "mls", "multistep")

_rank_local_maxima = False


@contextlib.contextmanager
def rank_local_maxima() -> Iterator[None]:
    """Inside, IMLS batch maxima are not all-reduced across ranks.

    For passes whose statistics are thrown away (the CUDA-graph warm-up): their
    collectives would otherwise pair with another rank's next step.
    """
    global _rank_local_maxima
    previous, _rank_local_maxima = _rank_local_maxima, True
    try:
        yield
    finally:
        _rank_local_maxima = previous


def reduces_across_ranks() -> bool:
    """Whether IMLS batch maxima are all-reduced now (a process group, not warm-up)."""
    return dist.is_available() and dist.is_initialized() and not _rank_local_maxima


def check_timesteps(timesteps: int) -> None:
    if timesteps < 1:
        raise OptionError(f"timesteps must be >= 1, got {timesteps}")


def check_threshold(threshold: float) -> None:
    if not threshold > 0:
        raise OptionError(f"threshold must be > 0, got {threshold}")


class SpikingNeuron(torch.nn.Module):
    """Base type of every spiking neuron layer (training, deploy and baseline forms).

    Subclasses implement ``forward(x, valid) -> spikes`` and set ``timesteps``.
    ``multistep`` tells how the output reads: False, one multi-level spike count in
    ``{0..T}`` per frame; True, binary spikes with the T steps folded into the leading
    dimension (time outermost). Firing-rate hooks and the energy report rely on this type.
    """

    timesteps: int = 1
    multistep: bool = False


def multi_level_fire(u: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Multi-level spike of a threshold-normalised potential ``u = v / theta``.

    Forward is ``floor(clip(u, 0, T))`` (Eq. 7); backward is the straight-through
    gradient of ``clip`` (Eq. 8): 1 on ``[0, T]`` (boundaries included) and 0 elsewhere,
    which becomes ``1 / theta`` with respect to ``v`` through the division.

    Args:
        u: Membrane potential divided by the firing threshold.
        timesteps: T, the largest number of spikes.

    Returns:
        Spike counts in ``{0, ..., T}`` with the dtype of ``u``.
    """
    clipped = u.clamp(0.0, float(timesteps))
    if not (torch.is_grad_enabled() and clipped.requires_grad):
        # no gradient to carry (inference): the same values, two passes and a tensor fewer
        # (``c + (floor(c) - c)`` is exactly ``floor(c)``: the difference is exact)
        return clipped.floor_()
    return clipped + (torch.floor(clipped) - clipped).detach()


class MultiLevelSpikeNeuron(SpikingNeuron):
    """MLS firing with a fixed threshold (Eq. 7-8): ``floor(clip(x / theta, 0, T))``.

    Args:
        timesteps: T, the simulated time window.
        threshold: Firing threshold theta (> 0).
    """

    @typechecked
    def __init__(self, timesteps: int, threshold: float = 1.0):
        super().__init__()
        check_timesteps(timesteps)
        check_threshold(threshold)
        self.timesteps = timesteps
        self.threshold = threshold

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}, threshold={self.threshold}"

    def forward(
        self, x: torch.Tensor, valid: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Fire multi-level spikes.

        Args:
            x: Pre-synaptic input (N, L, C).
            valid: Unused; accepted for a common neuron interface.

        Returns:
            Spike counts (N, L, C) in ``{0..T}``.
        """
        return multi_level_fire(x / self.threshold, self.timesteps)


def all_reduce_max(tensor: torch.Tensor) -> None:
    """In-place MAX all-reduce over the default process group.

    Under NCCL the wait is ordered on the CUDA stream, not on the host: ESPnet sets
    ``NCCL_BLOCKING_WAIT=1``, under which ``wait()`` would stop the host at each of the
    encoder's ~60 small all-reduces per forward until the GPU caught up.
    ``IMLSPIKE_NCCL_STREAM_WAIT=0`` (or a torch without ``Work.block_current_stream``)
    keeps the host wait.
    """
    work = dist.all_reduce(tensor, op=dist.ReduceOp.MAX, async_op=True)
    stream_wait = getattr(work, "block_current_stream", None)  # torch >= 2.8 or so
    if (stream_wait is not None and tensor.is_cuda and dist.get_backend() == "nccl"
            and os.environ.get("IMLSPIKE_NCCL_STREAM_WAIT", "1") == "1"):
        stream_wait()
    else:
        work.wait()


class InputAwareMultiLevelSpikeNeuron(SpikingNeuron):
    """IMLS firing (Eq. 10-11): MLS with an input-aware channel-wise threshold.

    In training, ``Lambda`` is the per-channel maximum of the input over batch and time,
    taken over valid (unpadded) frames only, and ``s = floor(clip(x * T / Lambda, 0, T))``
    so that the largest input of each channel fires T spikes (effective threshold
    ``Lambda / T``). The running average ``Lambda~ <- (1 - alpha) Lambda~ + alpha Lambda``
    (buffer ``running_max``, saved in checkpoints) replaces ``Lambda`` in evaluation; the
    first training batch initialises it. ``Lambda`` is a statistic, so no gradient flows
    through it (as for a threshold).

    Choices where the paper is silent:

    * A batch whose maxima are not all finite (an overflowing or NaN activation) leaves
      the statistics untouched, as if it had not been seen: ESPnet's trainer skips the
      optimizer step of such a batch, and one bad batch must not poison every later eval.
      The check runs on the device (no host synchronisation).
    * Channels whose maximum is not positive cannot fire: their ``Lambda`` is floored at
      ``eps`` in training (no division by zero), and a channel whose running statistic
      never rose above ``eps`` stays silent in evaluation too.
    * Under ``torch.distributed`` the batch maximum is all-reduced (MAX) across ranks
      before use, so every rank fires with the global statistics and keeps the same
      buffer (DDP broadcasts rank 0's buffers each step).

    Args:
        channels: Number of channels C (size of the last input dimension).
        timesteps: T, the simulated time window.
        momentum: alpha of the running average, in (0, 1].
        eps: Smallest threshold statistic.
    """

    @typechecked
    def __init__(
        self,
        channels: int,
        timesteps: int,
        momentum: float = 0.1,
        eps: float = 1e-6,
    ):
        super().__init__()
        check_timesteps(timesteps)
        if not 0.0 < momentum <= 1.0:
            raise OptionError(f"momentum must be in (0, 1], got {momentum}")
        self.channels = channels
        self.timesteps = timesteps
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("running_max", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self._calibration_checked = False

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, timesteps={self.timesteps}, "
            f"momentum={self.momentum}"
        )

    def batch_max(
        self, x: torch.Tensor, valid: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Per-channel maximum of ``x`` over valid frames (Eq. 10), at least float32.

        A NaN maximum is returned as +inf, so that it survives a MAX all-reduce. The
        maximum is taken in ``x``'s dtype and converted after (exact: it is one of the
        values), which saves a float32 copy of a half-precision input.
        """
        x = x.detach()
        if valid is not None:
            x = x.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        peak = x.reshape(-1, x.size(-1)).amax(dim=0)
        peak = peak.to(torch.promote_types(peak.dtype, torch.float32))
        peak = torch.nan_to_num(peak, nan=float("inf"), posinf=float("inf"))
        if reduces_across_ranks():
            all_reduce_max(peak)
        return peak.clamp(min=self.eps)

    @torch.no_grad()
    def update_statistics(self, peak: torch.Tensor) -> None:
        """Eq. 11 running average, skipped entirely for a batch with a non-finite max."""
        usable = torch.isfinite(peak).all()
        stat = peak.to(self.running_max.dtype)
        first = self.num_batches_tracked == 0
        updated = torch.where(first, stat, torch.lerp(self.running_max, stat, self.momentum))
        self.running_max.copy_(torch.where(usable, updated, self.running_max))
        self.num_batches_tracked.add_(usable.to(self.num_batches_tracked.dtype))

    def eval_threshold(self) -> torch.Tensor:
        """Lambda~ for evaluation; +inf (silent) for channels that never fired."""
        self._warn_if_uncalibrated()
        return torch.where(
            self.running_max > self.eps,
            self.running_max,
            torch.full_like(self.running_max, float("inf")),
        )

    def _warn_if_uncalibrated(self) -> None:
        if self._calibration_checked or torch.compiler.is_compiling():
            return
        self._calibration_checked = True
        if int(self.num_batches_tracked) == 0:
            logging.warning(
                "IMLS neuron evaluated before any training batch updated its threshold "
                "statistics (running_max is its initial value): outputs are uncalibrated"
            )

    def forward(
        self, x: torch.Tensor, valid: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Fire multi-level spikes with the input-aware threshold.

        Args:
            x: Pre-synaptic input (N, L, C).
            valid: (N, L) bool mask of unpadded frames; None means all valid.

        Returns:
            Spike counts (N, L, C) in ``{0..T}``.
        """
        if self.training:
            peak = self.batch_max(x, valid)
            self.update_statistics(peak)
        else:
            peak = self.eval_threshold()
        # x / Lambda first: the channel maximum then maps to exactly T spikes.
        return multi_level_fire(x / peak.to(x.dtype) * self.timesteps, self.timesteps)

    def _load_from_state_dict(self, *args, **kwargs):
        # a loaded checkpoint may carry calibrated statistics: check again at next eval
        self._calibration_checked = False
        super()._load_from_state_dict(*args, **kwargs)


@typechecked
def make_neuron(
    firing: str,
    channels: int,
    timesteps: int,
    momentum: float = 0.1,
    threshold: float = 1.0,
    leak: float = 1.0,
    surrogate_alpha: float = 2.0,
) -> SpikingNeuron:
    """Build one spiking neuron layer by firing name.

    Args:
        firing: "imls", "mls" or "multistep".
        channels: Channels of the input (used by IMLS).
        timesteps: T.
        momentum: IMLS running-average momentum alpha.
        threshold: Fixed threshold of MLS and multi-step neurons.
        leak: Leak beta of the multi-step neuron.
        surrogate_alpha: Surrogate sharpness of the multi-step neuron.

    Returns:
        The neuron module.
    """
    if firing == "imls":
        return InputAwareMultiLevelSpikeNeuron(channels, timesteps, momentum)
    if firing == "mls":
        return MultiLevelSpikeNeuron(timesteps, threshold)
    if firing == "multistep":
        from espnet_imlspike.neurons_multistep import MultiStepIFNeuron

        return MultiStepIFNeuron(timesteps, threshold, leak, surrogate_alpha)
    raise OptionError(f"firing must be one of {FIRING_TYPES}, got {firing!r}")
