"""The spiking Transformer block of Eq. 4 and its spiking ChannelMLP (Eq. 6).

The residual stream carries real values (the membrane shortcut of spike-driven
Transformers); each module starts with a spiking neuron that turns it into spikes:

    X'  = X  + Attn(SN(LN(X)))
    X'' = X' + SN(SN(LN(X')) W1) W2

The LayerNorms are those of ESPnet's EncoderLayer (``normalize_before=True`` puts them
on the branch input as above; False puts them after each residual sum). They keep the
parameter count equal to ESPnet's Transformer, as the paper compares equal sizes.
Dropout is applied to the real-valued branch outputs only, never to spikes.
"""

from typing import Callable

import torch
from typeguard import typechecked

from espnet_imlspike import fast


class SpikingChannelMLP(torch.nn.Module):
    """ChannelMLP on spike input: ``SN(X W1) W2`` (Eq. 6 after its input neuron).

    Weight names ``w_1``/``w_2`` follow ESPnet's PositionwiseFeedForward.

    Args:
        size: Model dimension D.
        hidden_units: Hidden dimension.
        neuron: Factory returning a spiking neuron for ``hidden_units`` channels.
    """

    @typechecked
    def __init__(
        self, size: int, hidden_units: int, neuron: Callable[[], torch.nn.Module]
    ):
        super().__init__()
        self.w_1 = torch.nn.Linear(size, hidden_units)
        self.hidden_neuron = neuron()
        self.w_2 = torch.nn.Linear(hidden_units, size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Args: x spikes (N, L, D), valid (N, L). Returns: (N, L, D)."""
        return self.w_2(self.hidden_neuron(self.w_1(x), valid))


class SpikingTransformerBlock(torch.nn.Module):
    """One block of Eq. 4 with pre- or post-LayerNorm.

    Args:
        size: Model dimension D.
        self_attn: Spiking attention module taking (spikes, valid).
        feed_forward: SpikingChannelMLP.
        neuron: Factory returning a spiking neuron for D channels (module inputs).
        dropout_rate: Dropout on the branch outputs.
        normalize_before: LayerNorm on the branch inputs (True) or after the sums.
    """

    @typechecked
    def __init__(
        self,
        size: int,
        self_attn: torch.nn.Module,
        feed_forward: torch.nn.Module,
        neuron: Callable[[], torch.nn.Module],
        dropout_rate: float,
        normalize_before: bool = True,
    ):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(size, eps=1e-12)
        self.attn_input_neuron = neuron()
        self.self_attn = self_attn
        self.norm2 = torch.nn.LayerNorm(size, eps=1e-12)
        self.mlp_input_neuron = neuron()
        self.feed_forward = feed_forward
        self.dropout = torch.nn.Dropout(dropout_rate)
        self.normalize_before = normalize_before

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Args: x (N, L, D) real-valued, valid (N, L). Returns: (N, L, D).

        With the fast paths on (:mod:`espnet_imlspike.fast`, default on CUDA), a block of
        IMLS neurons and HD-RepSSA runs :func:`espnet_imlspike.fast.block.block_forward`:
        the same outputs, less memory kept for backward.
        """
        if not torch.compiler.is_compiling() and fast.enabled(x):
            from espnet_imlspike.fast import block as fast_block

            if fast_block.supported(self) and not fast.has_hooks(self):
                return fast_block.block_forward(self, x, valid)
        branch_in = self.norm1(x) if self.normalize_before else x
        spikes = self.attn_input_neuron(branch_in, valid)
        x = x + self.dropout(self.self_attn(spikes, valid))
        if not self.normalize_before:
            x = self.norm1(x)
        branch_in = self.norm2(x) if self.normalize_before else x
        spikes = self.mlp_input_neuron(branch_in, valid)
        x = x + self.dropout(self.feed_forward(spikes, valid))
        if not self.normalize_before:
            x = self.norm2(x)
        return x
