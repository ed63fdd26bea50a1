"""Frame-stepped spiking neurons of the SNN baselines (paper Sec. VI-B, Tables I-II).

Unlike the neurons of :mod:`espnet_imlspike.neurons`, these run one step per input
frame: the sequence axis *is* the time axis (the paper's "Timestep 1" rows), and each
neuron carries its state from frame to frame. Both follow the package's neuron
interface ``neuron(x, valid) -> spikes`` with ``x`` of shape (N, L, C), ``timesteps = 1``
and ``multistep = False`` (binary spikes, one per frame), so the energy report's
firing-rate hooks record them like any other :class:`SpikingNeuron`.

* :class:`LIFNeuron`: the vanilla leaky integrate-and-fire neuron of Bittar & Garner
  (arXiv 2212.01187): ``u[t] = alpha (u[t-1] - theta s[t-1]) + (1 - alpha) I[t]``,
  ``s[t] = H(u[t] - theta)`` with a fixed decay ``alpha`` and the boxcar surrogate
  gradient; optionally with layer-wise recurrence ``I[t] = x[t] + V s[t-1]`` (RLIF).
* :class:`GatedSpikingUnit`: the GSU of Spiking-FullSubNet (Hao et al., arXiv
  2410.04785): an input-dependent forget gate sets the membrane decay,
  ``[g_f, g_c] = x[t] + W_hh s[t-1]``, ``f = sigmoid(g_f)``,
  ``c[t] = f c[t-1] + (1 - f) g_c``, ``s[t] = H(c[t] - theta)`` (theta = 0 as in the
  reference code), triangle surrogate gradient.

Padding sits at the end of each sequence and the recurrence is causal, so valid frames
never see padded ones; outputs of padded frames are set to zero.
"""

from typing import Optional

import torch
from typeguard import typechecked

from espnet_imlspike.errors import InputError, OptionError
from espnet_imlspike.neurons import SpikingNeuron


class _BoxcarHeaviside(torch.autograd.Function):
    """H(v) with gradient 1 on -w/2 < v <= w/2 (Bittar & Garner's boxcar surrogate)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, width: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.width = width
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (v,) = ctx.saved_tensors
        half = ctx.width / 2
        window = (v > -half) & (v <= half)
        return grad_output * window.to(grad_output.dtype), None


class _TriangleHeaviside(torch.autograd.Function):
    """H(v) (fires at v >= 0) with gradient max(0, gamma - |v|) / gamma^2 (GSU code)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, gamma: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.gamma = gamma
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (v,) = ctx.saved_tensors
        gamma = ctx.gamma
        return grad_output * (gamma - v.abs()).clamp(min=0) / gamma**2, None


def boxcar_spike(v: torch.Tensor, width: float = 1.0) -> torch.Tensor:
    """Heaviside step of ``v`` (spike where v > 0), boxcar surrogate of ``width``."""
    return _BoxcarHeaviside.apply(v, width)


def triangle_spike(v: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Heaviside step of ``v`` (spike where v >= 0), triangle surrogate of half-width gamma."""
    return _TriangleHeaviside.apply(v, gamma)


def _zero_padding(spikes: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    if valid is None:
        return spikes
    return spikes * valid.unsqueeze(-1).to(spikes.dtype)


class LIFNeuron(SpikingNeuron):
    """Vanilla LIF neuron stepped over frames (Bittar & Garner, arXiv 2212.01187, Eq. 1-3).

    ``u[t] = alpha (u[t-1] - theta s[t-1]) + (1 - alpha) I[t]`` and
    ``s[t] = H(u[t] - theta)``: leaky integration, subtractive reset, fixed decay
    ``alpha = exp(-dt / tau)`` (the "vanilla" neuron: no trainable neuron parameter,
    unlike the learnable per-neuron decay of their adLIF work). The state starts at 0
    (their code draws it at random). With ``recurrent`` the current gets the layer's own
    previous spikes, ``I[t] = x[t] + V s[t-1]`` (their RLIF), with ``V`` a bias-free
    trainable ``channels x channels`` matrix held by the neuron.

    Args:
        channels: Number of neurons C.
        decay: alpha in [0, 1).
        threshold: theta > 0.
        recurrent: Add the layer-wise recurrent matrix V.
        surrogate_width: Width of the boxcar surrogate gradient around theta.
    """

    timesteps = 1
    multistep = False

    @typechecked
    def __init__(
        self,
        channels: int,
        decay: float = 0.5,
        threshold: float = 1.0,
        recurrent: bool = False,
        surrogate_width: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise OptionError(f"decay must be in [0, 1), got {decay}")
        if not threshold > 0:
            raise OptionError(f"threshold must be > 0, got {threshold}")
        if not surrogate_width > 0:
            raise OptionError(f"surrogate_width must be > 0, got {surrogate_width}")
        self.channels = channels
        self.decay = decay
        self.threshold = threshold
        self.surrogate_width = surrogate_width
        self.recurrent = (
            torch.nn.Linear(channels, channels, bias=False) if recurrent else None
        )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, decay={self.decay}, threshold={self.threshold}"

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the neuron over the frames.

        Args:
            x: Input current (N, L, C), one frame per time step.
            valid: (N, L) bool mask of unpadded frames (None: all valid).

        Returns:
            Binary spikes (N, L, C), zero on padded frames.
        """
        alpha, theta = self.decay, self.threshold
        potential = x.new_zeros(x.size(0), x.size(2))
        spike = torch.zeros_like(potential)
        spikes = []
        for t in range(x.size(1)):
            current = x[:, t]
            if self.recurrent is not None:
                current = current + self.recurrent(spike)
            potential = alpha * (potential - theta * spike) + (1 - alpha) * current
            spike = boxcar_spike(potential - theta, self.surrogate_width)
            spikes.append(spike)
        out = torch.stack(spikes, dim=1) if spikes else torch.zeros_like(x)
        return _zero_padding(out, valid)


class GatedSpikingUnit(SpikingNeuron):
    """GSU neuron of Spiking-FullSubNet (Hao et al., arXiv 2410.04785), stepped over frames.

    The input holds both pre-activations, ``x[t] = W_ih i[t] + b`` of width 2C (forget
    gate first, then cell), computed for all frames by the layer before the neuron; the
    neuron adds its recurrent term and integrates:

    ``[g_f, g_c] = x[t] + W_hh s[t-1]``, ``f[t] = sigmoid(g_f)``,
    ``c[t] = f[t] c[t-1] + (1 - f[t]) g_c``, ``s[t] = H(c[t] - theta)``.

    The gate makes the membrane decay input-dependent. As in the reference code there is
    no reset and theta is 0; ``W_hh`` (2C x C, bias-free) belongs to the neuron. With
    ``membrane_norm: layernorm`` the membrane is normalised over channels each step
    before firing and carried normalised (the reference code's optional normalisation of
    ``c``, which is a BatchNorm there; LayerNorm keeps every utterance independent of
    the batch it is in, with the same 2C parameters).

    Args:
        channels: Number of neurons C (the input has 2C channels).
        threshold: theta.
        membrane_norm: "none" or "layernorm".
        surrogate_gamma: Half-width of the triangle surrogate gradient.
    """

    timesteps = 1
    multistep = False

    @typechecked
    def __init__(
        self,
        channels: int,
        threshold: float = 0.0,
        membrane_norm: str = "none",
        surrogate_gamma: float = 1.0,
    ):
        super().__init__()
        if membrane_norm not in ("none", "layernorm"):
            raise OptionError(
                f"membrane_norm must be 'none' or 'layernorm', got {membrane_norm!r}"
            )
        if not surrogate_gamma > 0:
            raise OptionError(f"surrogate_gamma must be > 0, got {surrogate_gamma}")
        self.channels = channels
        self.threshold = threshold
        self.surrogate_gamma = surrogate_gamma
        self.recurrent = torch.nn.Linear(channels, 2 * channels, bias=False)
        self.norm = torch.nn.LayerNorm(channels) if membrane_norm == "layernorm" else None

    def extra_repr(self) -> str:
        return f"channels={self.channels}, threshold={self.threshold}"

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the unit over the frames.

        Args:
            x: Gate and cell pre-activations (N, L, 2C), one frame per time step.
            valid: (N, L) bool mask of unpadded frames (None: all valid).

        Returns:
            Binary spikes (N, L, C), zero on padded frames.
        """
        if x.size(-1) != 2 * self.channels:
            raise InputError(
                f"GatedSpikingUnit with {self.channels} channels expects input width "
                f"{2 * self.channels}, got {x.size(-1)}"
            )
        cell = x.new_zeros(x.size(0), self.channels)
        spike = torch.zeros_like(cell)
        spikes = []
        for t in range(x.size(1)):
            gate, candidate = (x[:, t] + self.recurrent(spike)).chunk(2, dim=-1)
            forget = torch.sigmoid(gate)
            cell = forget * cell + (1 - forget) * candidate
            if self.norm is not None:
                cell = self.norm(cell)
            spike = triangle_spike(cell - self.threshold, self.surrogate_gamma)
            spikes.append(spike)
        if not spikes:
            return x.new_zeros(x.size(0), 0, self.channels)
        return _zero_padding(torch.stack(spikes, dim=1), valid)
