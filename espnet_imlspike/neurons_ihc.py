"""The two-compartment IHC-LIF neuron of Spiking-LEAF (Song et al., arXiv 2309.09469).

Spiking-LEAF encodes the learnable filter bank's channel energies with "IHC-LIF"
neurons, inspired by inner hair cells: a dendritic and a somatic compartment with
their own dynamics (two time scales), coupled to each other, plus lateral feedback
between frequency channels. Its full equations were not at hand offline; we follow the
two-compartment LIF (TC-LIF, Zhang et al., arXiv 2308.13250) that IHC-LIF extends, with
per-channel leaks and a learnable lateral feedback matrix, and say so:

* dendrite: ``u_d[t] = a_d u_d[t-1] - b_d u_s[t-1] + I[t] + W_lat s[t-1] - gamma s[t-1]``
* soma:     ``u_s[t] = a_s u_s[t-1] + b_s u_d[t] - theta s[t-1]``
* spike:    ``s[t] = H(u_s[t] - theta)`` (triangle surrogate gradient)

``a_d, a_s, b_d, b_s`` are per-channel ``sigmoid`` of trainable parameters (so leaks
and couplings stay in (0, 1); with ``a = 1`` and no lateral term this is TC-LIF, whose
dendrite also loses ``gamma`` on a spike), ``W_lat`` is a trainable ``C x C`` matrix
(zero at start) carrying each channel's previous spikes to every channel's dendrite.
One step per frame: ``timesteps = 1``, binary spikes, ``neuron(x, valid)`` as every
:class:`~espnet_imlspike.neurons.SpikingNeuron`.
"""

from typing import Optional

import torch
from typeguard import typechecked

from espnet_imlspike.errors import InputError, OptionError
from espnet_imlspike.neurons import SpikingNeuron
from espnet_imlspike.neurons_recurrent import triangle_spike


class IHCLIFNeuron(SpikingNeuron):
    """Two-compartment IHC-LIF neurons, one per frequency channel, stepped over frames.

    Args:
        channels: Number of channels C.
        dendrite_decay: Initial ``a_d`` in (0, 1) (slow compartment).
        soma_decay: Initial ``a_s`` in (0, 1) (fast compartment).
        coupling: Initial ``b_d`` and ``b_s`` in (0, 1).
        threshold: theta > 0.
        dendrite_reset: gamma, the dendrite's loss on a spike (TC-LIF's 0.5).
        lateral: Learn the lateral feedback matrix ``W_lat``.
        surrogate_gamma: Half-width of the triangle surrogate gradient.
    """

    timesteps = 1
    multistep = False

    @typechecked
    def __init__(
        self,
        channels: int,
        dendrite_decay: float = 0.9,
        soma_decay: float = 0.5,
        coupling: float = 0.5,
        threshold: float = 1.0,
        dendrite_reset: float = 0.5,
        lateral: bool = True,
        surrogate_gamma: float = 1.0,
    ):
        super().__init__()
        for name, value in (("dendrite_decay", dendrite_decay), ("soma_decay", soma_decay),
                            ("coupling", coupling)):
            if not 0.0 < value < 1.0:
                raise OptionError(f"{name} must be in (0, 1), got {value}")
        if not threshold > 0:
            raise OptionError(f"threshold must be > 0, got {threshold}")
        self.channels = channels
        self.threshold = threshold
        self.dendrite_reset = dendrite_reset
        self.surrogate_gamma = surrogate_gamma
        # rows: a_d, a_s, b_d, b_s (pre-sigmoid), one column per channel
        init = torch.tensor([dendrite_decay, soma_decay, coupling, coupling])
        self.dynamics = torch.nn.Parameter(
            init.logit().unsqueeze(1).repeat(1, channels).contiguous()
        )
        self.lateral = torch.nn.Linear(channels, channels, bias=False) if lateral else None
        if self.lateral is not None:
            torch.nn.init.zeros_(self.lateral.weight)  # start as independent channels

    def extra_repr(self) -> str:
        return f"channels={self.channels}, threshold={self.threshold}"

    def coefficients(self) -> torch.Tensor:
        """(4, C): a_d, a_s, b_d, b_s."""
        return torch.sigmoid(self.dynamics)

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encode input currents (N, L, C) into binary spikes (N, L, C), zero on padding."""
        if x.size(-1) != self.channels:
            raise InputError(
                f"IHCLIFNeuron with {self.channels} channels got input width {x.size(-1)}"
            )
        a_d, a_s, b_d, b_s = self.coefficients().to(x.dtype)
        theta, gamma = self.threshold, self.dendrite_reset
        dendrite = x.new_zeros(x.size(0), self.channels)
        soma = torch.zeros_like(dendrite)
        spike = torch.zeros_like(dendrite)
        spikes = []
        for t in range(x.size(1)):
            feedback = self.lateral(spike) if self.lateral is not None else 0.0
            dendrite = a_d * dendrite - b_d * soma + x[:, t] + feedback - gamma * spike
            soma = a_s * soma + b_s * dendrite - theta * spike
            spike = triangle_spike(soma - theta, self.surrogate_gamma)
            spikes.append(spike)
        out = torch.stack(spikes, dim=1) if spikes else torch.zeros_like(x)
        if valid is not None:
            out = out * valid.unsqueeze(-1).to(out.dtype)
        return out
