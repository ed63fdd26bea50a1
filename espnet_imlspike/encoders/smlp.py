"""SMLP baselines of the paper (Tables I-II): spiking MLP encoders with LIF or GSU neurons.

"Two 3-layer SMLP with 1024 hidden and output dimensions as encoders for ASR,
incorporating either vanilla LIF neuron model or Gated Spiking Unit (GSU)" (paper
Sec. VI-B). :class:`SMLPEncoder` (``encoder: smlp``) is that encoder for ESPnet's ASR
task: ESPnet's convolutional subsampling (the paper's front for every ASR model: two
3x3 stride-2 convolutions, here ``input_layer_size`` channels wide and without the
Transformer's positional encoding), ``num_layers`` spiking layers of ``hidden_size``
neurons stepped over the subsampled frames (:mod:`~espnet_imlspike.encoders.smlp_layers`),
and a linear readout of the last layer's spikes to ``output_size``, the width of
ESPnet's decoder (which takes the encoder's ``output_size()``).

:class:`SMLPSpeakerEncoder` (SPK task, ``encoder: smlp``) is the same stack without
front end or readout, returning spikes channels-first for ESPnet's pooling: with
``recurrent: true`` LIF layers it is the spiking RNN back-end of the Spiking-LEAF model.

Both price themselves for the energy report through ``layer_costs`` (the front's MACs
under ``embed.*``, which the report keeps out of its totals by default).
"""

from typing import List, Optional

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from typeguard import typechecked

from espnet_imlspike.encoders.common import (
    CONV_SUBSAMPLING,
    check_batch,
    conv_subsample,
    minimum_input_frames,
    subsampled_lengths,
    valid_frames,
)
from espnet_imlspike.encoders.smlp_layers import SpikingLayerStack
from espnet_imlspike.energy.flops import LayerCost, conv_front_costs
from espnet_imlspike.errors import OptionError
from espnet_imlspike.neurons import SpikingNeuron


class SMLPEncoder(AbsEncoder):
    """SMLP encoder for ESPnet's ASR task (``encoder: smlp``).

    Args:
        input_size: Feature dimension.
        output_size: Width of the readout (and of ESPnet's decoder).
        hidden_size: Neurons per spiking layer.
        num_layers: Number of spiking layers.
        neuron: "lif" (vanilla LIF, Bittar & Garner) or "gsu" (Hao et al.).
        input_layer: ESPnet subsampling ("conv2d", "conv2d2", "conv2d6", "conv2d8") or
            None (features go to the first layer as they are).
        input_layer_size: Channels (and output width) of the subsampling.
        dropout_rate: Dropout on each layer's output spikes (training only).
        decay: LIF membrane decay alpha (fixed).
        threshold: Firing threshold (default: LIF 1, GSU 0).
        recurrent: LIF layer-wise recurrence (RLIF).
        bias: Bias of the LIF layers' Linear (Bittar & Garner: none).
        membrane_norm: GSU membrane normalisation, "none" or "layernorm".
        normalize_current: LIF: parameter-free LayerNorm of each layer's currents
            (default on for LIF, off for GSU; see smlp_layers).
    """

    timesteps = 1  # one neuron step per (subsampled) frame

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        hidden_size: int = 1024,
        num_layers: int = 3,
        neuron: str = "lif",
        input_layer: Optional[str] = "conv2d",
        input_layer_size: int = 512,
        dropout_rate: float = 0.1,
        decay: float = 0.5,
        threshold: Optional[float] = None,
        recurrent: bool = False,
        bias: bool = False,
        membrane_norm: str = "none",
        normalize_current: Optional[bool] = None,
    ):
        super().__init__()
        if input_layer is not None and input_layer not in CONV_SUBSAMPLING:
            raise OptionError(
                f"input_layer must be one of {sorted(CONV_SUBSAMPLING)} or None, "
                f"got {input_layer!r}"
            )
        self.input_size = input_size
        self.input_layer = input_layer
        self.neuron_type = neuron
        self._output_size = output_size
        if input_layer is None:
            self.embed = None
            first = input_size
        else:
            # Identity instead of the Transformer's positional encoding: no attention here
            self.embed = CONV_SUBSAMPLING[input_layer](
                input_size, input_layer_size, dropout_rate, torch.nn.Identity()
            )
            first = input_layer_size
        self.min_input_frames = minimum_input_frames(self.embed)
        self.stack = SpikingLayerStack(
            first, hidden_size, num_layers, neuron=neuron, bias=bias,
            recurrent=recurrent, decay=decay, threshold=threshold,
            membrane_norm=membrane_norm, dropout_rate=dropout_rate,
            normalize_current=normalize_current,
        )
        self.readout = torch.nn.Linear(hidden_size, output_size)

    def output_size(self) -> int:
        return self._output_size

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: Optional[torch.Tensor] = None,
    ):
        """Encode padded features.

        Args:
            xs_pad: Features (B, L, input_size).
            ilens: Valid frames per utterance (B,).
            prev_states: Not used.

        Returns:
            Readout (B, L', output_size) (zero on padded frames), output lengths (B,),
            None.
        """
        check_batch(xs_pad, ilens, self.input_size, self.min_input_frames,
                    validate_values=not self.training)
        if self.embed is None:
            xs = xs_pad
        else:
            xs = conv_subsample(self.embed, xs_pad)
        olens = subsampled_lengths(ilens, self.input_layer)
        valid = valid_frames(olens, xs.size(1))
        out = self.readout(self.stack(xs, valid))
        return out * valid.unsqueeze(-1).to(out.dtype), olens, None

    def layer_costs(self, in_frames: int, out_frames: int, ann: bool = False) -> List[LayerCost]:
        """Per-layer FLOPs of one utterance for the energy report.

        The subsampling and the first layer see real-valued input (MACs); every later
        ``Linear``, each recurrent matrix and the readout are driven by spikes.
        """
        costs = []
        if self.embed is not None:
            costs += conv_front_costs(self.embed, in_frames, self.input_size)
        costs += self.stack.costs(out_frames, "stack.", None, ann)
        last = f"stack.layers.{len(self.stack.layers) - 1}.neuron"
        readout = self.readout
        costs.append(LayerCost(
            "readout", out_frames * readout.in_features * readout.out_features,
            None if ann else last,
        ))
        return costs


class SpikeInput(SpikingNeuron):
    """Identity on spikes that arrive from outside the encoder (e.g. a spiking front end).

    It makes those spikes visible to the energy report's firing-rate hooks, so the first
    layer is priced as accumulates at their measured rate (Eq. 17) instead of as MACs.
    """

    timesteps = 1
    multistep = False

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x


class SMLPSpeakerEncoder(AbsEncoder):
    """Spiking layers for ESPnet's SPK task (``encoder: smlp``), e.g. Spiking-LEAF's SRNN.

    ESPnet's speaker model calls ``encoder(feats)`` with (B, L, input_size) and pools the
    result (B, output_size(), L); the output is the last layer's spikes, so mean pooling
    gives firing rates.

    Args:
        input_size: Input width (the front end's channels).
        hidden_size: Neurons per layer (the output width).
        num_layers: Number of layers.
        neuron: "lif" or "gsu".
        recurrent: LIF layer-wise recurrence (Spiking-LEAF's back-end is recurrent).
        input_spikes: The input is spikes (from a spiking front end): record its rate.
        dropout_rate: Dropout on each layer's output spikes.
        decay: LIF membrane decay.
        threshold: Firing threshold (default: LIF 1, GSU 0).
        bias: Bias of the LIF layers' Linear.
        membrane_norm: GSU membrane normalisation.
        normalize_current: LIF: parameter-free LayerNorm of each layer's currents.
    """

    timesteps = 1

    @typechecked
    def __init__(
        self,
        input_size: int,
        hidden_size: int = 512,
        num_layers: int = 2,
        neuron: str = "lif",
        recurrent: bool = True,
        input_spikes: bool = True,
        dropout_rate: float = 0.0,
        decay: float = 0.5,
        threshold: Optional[float] = None,
        bias: bool = False,
        membrane_norm: str = "none",
        normalize_current: Optional[bool] = None,
    ):
        super().__init__()
        self.input_size = input_size
        self.input_spikes = SpikeInput() if input_spikes else None
        self.stack = SpikingLayerStack(
            input_size, hidden_size, num_layers, neuron=neuron, bias=bias,
            recurrent=recurrent, decay=decay, threshold=threshold,
            membrane_norm=membrane_norm, dropout_rate=dropout_rate,
            normalize_current=normalize_current,
        )
        self._output_size = hidden_size

    def output_size(self) -> int:
        return self._output_size

    def forward(self, x: torch.Tensor, ilens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L, input_size) -> spikes (B, hidden_size, L); ``ilens`` masks padding."""
        check_batch(x, ilens, self.input_size, 1, validate_values=not self.training)
        valid = None if ilens is None else valid_frames(ilens, x.size(1))
        if self.input_spikes is not None:
            x = self.input_spikes(x, valid)
        return self.stack(x, valid).transpose(1, 2)

    def layer_costs(self, in_frames: int, out_frames: int, ann: bool = False) -> List[LayerCost]:
        """Per-layer FLOPs of one utterance (no subsampling: ``in_frames`` frames)."""
        first = "input_spikes" if self.input_spikes is not None else None
        return self.stack.costs(in_frames, "stack.", first, ann)
