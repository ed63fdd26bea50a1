"""Spiking-LEAF front end for ESPnet's SPK task (``frontend: spiking_leaf``).

Spiking-LEAF (Song et al., arXiv 2309.09469), the speaker-identification SNN baseline
of Table III: LEAF's learnable Gabor filter bank and Gaussian pooling
(:mod:`~espnet_imlspike.frontends.learnable_filterbank`) followed by two-compartment
IHC-LIF neurons (:mod:`~espnet_imlspike.neurons_ihc`) that turn the channel energies
into spikes, trained with the spike-rate regulariser ``L = L_cls + lambda L_SR``,
``L_SR = ReLU(R - R_target)`` (R: the front end's mean firing rate).

ESPnet's contract fits a front end: ``frontend(speech, lengths) -> (feats, lengths)``
on the raw waveform, the spikes then go to the encoder (the spiking RNN back-end,
``encoder: smlp`` with recurrent LIF layers). Between filter bank and neurons the
energies are log-compressed (the IHC's compressive transduction), normalised per
utterance and channel over the valid frames (a gain control, so the neurons see
currents of a known scale whatever the recording level) and scaled and shifted by a
learnable per-channel affine map.

The rate regulariser: ESPnet's speaker model returns its loss from its own
``forward`` and offers no hook for extra terms. The front end therefore adds
``lambda L_SR`` *through the backward pass*: :class:`_AddLossGradient` is the identity on
the spikes in the forward pass and, in the backward pass, also sends gradient
``lambda`` into ``L_SR``, exactly as if ``lambda L_SR`` had been added to the loss that
``backward()`` is called on. The reported loss does not include it (the last value is
kept in ``last_rate`` / ``last_rate_loss`` for logging); under ``use_amp`` the injected
gradient is not multiplied by the loss scale and with ``accum_grad`` > 1 not divided by
it (ESPnet scales only its own loss), so lambda is then effectively divided by the
loss scale, or multiplied by ``accum_grad``.
"""

from typing import Optional, Tuple

import torch
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from typeguard import typechecked

from espnet_imlspike.errors import InputError, OptionError
from espnet_imlspike.frontends.learnable_filterbank import GaborFilterbank
from espnet_imlspike.neurons_ihc import IHCLIFNeuron


class _AddLossGradient(torch.autograd.Function):
    """Identity on ``x``; backward also gives ``weight`` as the gradient of ``loss``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, loss: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        ctx.loss_meta = (loss.shape, loss.dtype, loss.device)
        return x.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        shape, dtype, device = ctx.loss_meta
        return grad_output, torch.full(shape, ctx.weight, dtype=dtype, device=device), None


def rate_loss(spikes: torch.Tensor, valid: torch.Tensor, target: float):
    """(R, L_SR): mean firing rate over valid frames and ``ReLU(R - target)``."""
    weights = valid.unsqueeze(-1).to(spikes.dtype)
    count = weights.sum().clamp(min=1) * spikes.size(-1)
    rate = (spikes * weights).sum() / count
    return rate, torch.relu(rate - target)


class SpikingLeafFrontend(AbsFrontend):
    """Learnable filter bank + IHC-LIF spike encoder (Spiking-LEAF).

    Args:
        fs: Sampling rate of the waveform (Hz).
        n_filters: Channels (neurons) N.
        window_length: Gabor filter / pooling window (samples, odd).
        hop_length: Frame shift (samples).
        min_freq: Lowest initial band edge (Hz).
        max_freq: Highest initial band edge (Hz).
        dendrite_decay: IHC-LIF initial dendritic leak.
        soma_decay: IHC-LIF initial somatic leak.
        coupling: IHC-LIF initial compartment coupling.
        threshold: IHC-LIF firing threshold.
        lateral: Learn the lateral feedback between channels.
        rate_target: R_target of the rate regulariser (spikes per neuron per frame).
        rate_weight: lambda of the rate regulariser (0 disables it).
    """

    @typechecked
    def __init__(
        self,
        fs: int = 16000,
        n_filters: int = 40,
        window_length: int = 401,
        hop_length: int = 160,
        min_freq: float = 60.0,
        max_freq: float = 7800.0,
        dendrite_decay: float = 0.9,
        soma_decay: float = 0.5,
        coupling: float = 0.5,
        threshold: float = 1.0,
        lateral: bool = True,
        rate_target: float = 0.2,
        rate_weight: float = 0.1,
    ):
        super().__init__()
        if not 0.0 <= rate_target <= 1.0:
            raise OptionError(f"rate_target must be in [0, 1], got {rate_target}")
        if rate_weight < 0:
            raise OptionError(f"rate_weight must be >= 0, got {rate_weight}")
        self.filterbank = GaborFilterbank(
            n_filters, fs, window_length, hop_length, min_freq, max_freq
        )
        self.gain = torch.nn.Parameter(torch.ones(n_filters))
        self.offset = torch.nn.Parameter(torch.zeros(n_filters))
        self.neuron = IHCLIFNeuron(
            n_filters, dendrite_decay, soma_decay, coupling, threshold, lateral=lateral
        )
        self.rate_target = rate_target
        self.rate_weight = rate_weight
        self.last_rate: Optional[torch.Tensor] = None
        self.last_rate_loss: Optional[torch.Tensor] = None

    def output_size(self) -> int:
        return self.filterbank.n_filters

    def currents(self, energy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Log-compressed, per-utterance normalised, affine-mapped input currents."""
        log_energy = torch.log(energy.clamp(min=0) + 1e-6)
        weights = valid.unsqueeze(-1).to(log_energy.dtype)
        frames = weights.sum(dim=1, keepdim=True).clamp(min=1)
        mean = (log_energy * weights).sum(dim=1, keepdim=True) / frames
        var = ((log_energy - mean) ** 2 * weights).sum(dim=1, keepdim=True) / frames
        normed = (log_energy - mean) / torch.sqrt(var + 1e-5)
        return (normed * self.gain + self.offset) * weights

    def forward(
        self, input: torch.Tensor, input_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, samples) -> spikes (B, frames, n_filters), frame counts (B,)."""
        if input.dim() != 2:
            raise InputError(
                f"spiking_leaf expects single-channel waveforms (batch, samples), "
                f"got shape {tuple(input.shape)}"
            )
        energy = self.filterbank(input)
        lengths = self.filterbank.frames(input_lengths).clamp(max=energy.size(1))
        valid = torch.arange(energy.size(1), device=input.device)[None] < lengths[:, None]
        spikes = self.neuron(self.currents(energy, valid), valid)
        rate, penalty = rate_loss(spikes, valid, self.rate_target)
        self.last_rate, self.last_rate_loss = rate.detach(), penalty.detach()
        if self.training and self.rate_weight > 0 and torch.is_grad_enabled():
            spikes = _AddLossGradient.apply(spikes, penalty, self.rate_weight)
        return spikes, lengths

    def flops(self, samples: int) -> int:
        """MACs of the filter bank for one utterance (real-valued waveform input)."""
        return self.filterbank.flops(samples)
