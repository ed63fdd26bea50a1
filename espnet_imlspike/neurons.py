"""Spiking neuron layers of IML-Spikeformer (paper Sec. III-A and IV).

Three firing mechanisms share one interface, ``neuron(x, valid) -> spikes``:

* :class:`MultiLevelSpikeNeuron` (MLS, Eq. 7-8): the T-step firing of an IF neuron
  with soft reset that receives its input only at the first step, simulated in a single
  step as the multi-level spike ``s = floor(clip(v / theta, 0, T))``.
* :class:`InputAwareMultiLevelSpikeNeuron` (IMLS, Eq. 10-11): MLS with a channel-wise
  threshold taken from the batch maximum of the input (valid frames only) in training
  and from its running average in evaluation.
* :class:`MultiStepIFNeuron`: the iterative T-step IF/LIF neuron with soft reset
  (Eq. 1-3), trained with BPTT and a surrogate gradient; the baseline firing.

Tensors are ``(N, L, C)`` with channels last; ``valid`` is a ``(N, L)`` bool mask of
unpadded frames. Multi-level spikes are returned as integer spike counts in ``{0..T}``
(no per-channel rescaling), so every synaptic layer that consumes them can be run as T
binary spike trains without folding any scale into its weights (Eq. 9).
"""

import math
from typing import Optional

import torch
import torch.distributed as dist
from typeguard import typechecked

FIRING_TYPES = ("imls", "mls", "multistep")


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
    return clipped + (torch.floor(clipped) - clipped).detach()


class _AtanHeaviside(torch.autograd.Function):
    """Heaviside step with the arctan surrogate gradient (as in SpikingJelly's ATan)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        grad = alpha / 2 / (1 + (math.pi / 2 * alpha * x).pow(2))
        return grad_output * grad, None


class MultiLevelSpikeNeuron(torch.nn.Module):
    """MLS firing with a fixed threshold (Eq. 7-8): ``floor(clip(x / theta, 0, T))``.

    Args:
        timesteps: T, the simulated time window.
        threshold: Firing threshold theta (> 0).
    """

    @typechecked
    def __init__(self, timesteps: int, threshold: float = 1.0):
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
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


class InputAwareMultiLevelSpikeNeuron(torch.nn.Module):
    """IMLS firing (Eq. 10-11): MLS with an input-aware channel-wise threshold.

    In training, ``Lambda`` is the per-channel maximum of the input over batch and time,
    taken over valid (unpadded) frames only, and ``s = floor(clip(x * T / Lambda, 0, T))``
    so that the largest input of each channel fires T spikes (effective threshold
    ``Lambda / T``). The running average ``Lambda~ <- (1 - alpha) Lambda~ + alpha Lambda``
    (buffer ``running_max``, saved in checkpoints) replaces ``Lambda`` in evaluation; the
    first training batch initialises it. ``Lambda`` is a statistic, so no gradient flows
    through it (as for a threshold). Channels whose maximum is not positive cannot fire:
    their ``Lambda`` is floored at ``eps`` so nothing divides by zero.

    Under ``torch.distributed`` the batch maximum is all-reduced (MAX) across ranks
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
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.channels = channels
        self.timesteps = timesteps
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("running_max", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, timesteps={self.timesteps}, "
            f"momentum={self.momentum}"
        )

    def batch_max(
        self, x: torch.Tensor, valid: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Per-channel maximum of ``x`` over valid frames (Eq. 10), at least float32."""
        x = x.detach().to(torch.promote_types(x.dtype, torch.float32))
        if valid is not None:
            x = x.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        peak = x.reshape(-1, x.size(-1)).amax(dim=0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        return peak.clamp(min=self.eps)

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
            with torch.no_grad():
                first = self.num_batches_tracked == 0
                peak_stat = peak.to(self.running_max.dtype)
                blended = torch.lerp(self.running_max, peak_stat, self.momentum)
                self.running_max.copy_(torch.where(first, peak_stat, blended))
                self.num_batches_tracked.add_(1)
        else:
            peak = self.running_max.clamp(min=self.eps)
        # x / Lambda first: the channel maximum then maps to exactly T spikes.
        return multi_level_fire(x / peak.to(x.dtype) * self.timesteps, self.timesteps)


class MultiStepIFNeuron(torch.nn.Module):
    """Iterative T-step IF/LIF neuron with soft reset (Eq. 1-3), for BPTT training.

    The input holds T time steps folded into the leading dimension, ``(T * B, L, C)``
    with time outermost. Each step integrates ``v[t] = beta v[t-1] + x[t]``, fires the
    binary spike ``s[t] = H(v[t] - theta)`` and subtracts ``theta s[t]``. The Heaviside
    step is trained with the arctan surrogate gradient.

    Args:
        timesteps: T, the number of simulated steps.
        threshold: Firing threshold theta (> 0).
        leak: beta in [0, 1]; 1 gives the IF neuron, < 1 the LIF neuron.
        surrogate_alpha: Sharpness of the arctan surrogate gradient.
    """

    @typechecked
    def __init__(
        self,
        timesteps: int,
        threshold: float = 1.0,
        leak: float = 1.0,
        surrogate_alpha: float = 2.0,
    ):
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"leak must be in [0, 1], got {leak}")
        self.timesteps = timesteps
        self.threshold = threshold
        self.leak = leak
        self.surrogate_alpha = surrogate_alpha

    def extra_repr(self) -> str:
        return (
            f"timesteps={self.timesteps}, threshold={self.threshold}, "
            f"leak={self.leak}"
        )

    def forward(
        self, x: torch.Tensor, valid: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Run the neuron over its T steps.

        Args:
            x: Pre-synaptic input (T * B, L, C), time outermost.
            valid: Unused; accepted for a common neuron interface.

        Returns:
            Binary spikes (T * B, L, C).
        """
        steps = x.reshape(self.timesteps, -1, *x.shape[1:])
        potential = torch.zeros_like(steps[0])
        spikes = []
        for t in range(self.timesteps):
            potential = self.leak * potential + steps[t]
            spike = _AtanHeaviside.apply(
                potential - self.threshold, self.surrogate_alpha
            )
            potential = potential - self.threshold * spike
            spikes.append(spike)
        return torch.stack(spikes).reshape(x.shape)


@typechecked
def make_neuron(
    firing: str,
    channels: int,
    timesteps: int,
    momentum: float = 0.1,
    threshold: float = 1.0,
    leak: float = 1.0,
    surrogate_alpha: float = 2.0,
) -> torch.nn.Module:
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
        return MultiStepIFNeuron(timesteps, threshold, leak, surrogate_alpha)
    raise ValueError(f"firing must be one of {FIRING_TYPES}, got {firing!r}")
