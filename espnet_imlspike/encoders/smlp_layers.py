"""A stack of frame-stepped spiking layers (the SMLP baselines' core) and its costs.

Each layer is a synaptic ``Linear`` followed by a frame-stepped neuron of
:mod:`espnet_imlspike.neurons_recurrent` (module names ``layers.<i>.linear`` and
``layers.<i>.neuron``, which the energy report uses):

* ``lif``: ``Linear(in, H)`` (bias optional; Bittar & Garner's layers have none), a
  LayerNorm *without* affine parameters over the H currents of each frame, then a
  :class:`~espnet_imlspike.neurons_recurrent.LIFNeuron` (optionally with its recurrent
  ``H x H`` matrix). Bittar & Garner normalise ``W x`` with BatchNorm; without any
  normalisation the currents of a default-initialised layer stay far below the
  threshold (std ~0.06 for theta = 1), no neuron fires and the boxcar surrogate passes no
  gradient, so the layer never learns. The parameter-free LayerNorm fixes that without
  adding parameters and keeps every utterance independent of its batch;
* ``gsu``: ``Linear(in, 2H)`` (with the bias ``b_ih`` of the GSU cell: gate and cell
  pre-activations) then a :class:`~espnet_imlspike.neurons_recurrent.GatedSpikingUnit`
  (its ``2H x H`` recurrent matrix inside).

Dropout acts on a layer's output spikes in training, as in Bittar & Garner's layers.
"""

from typing import List, Optional

import torch
from typeguard import typechecked

from espnet_imlspike.energy.flops import LayerCost
from espnet_imlspike.errors import OptionError
from espnet_imlspike.neurons_recurrent import GatedSpikingUnit, LIFNeuron

NEURON_TYPES = ("lif", "gsu")


class SpikingLayer(torch.nn.Module):
    """``Linear`` then a frame-stepped spiking neuron, then dropout on the spikes.

    Args:
        input_size: Input width.
        hidden_size: Number of neurons H.
        neuron: "lif" or "gsu".
        bias: Bias of the LIF layer's Linear (GSU layers always have ``b_ih``).
        recurrent: LIF only: layer-wise recurrent matrix V (RLIF).
        decay: LIF membrane decay alpha.
        threshold: Firing threshold (LIF default 1, GSU default 0).
        membrane_norm: GSU only: "none" or "layernorm".
        dropout_rate: Dropout on the output spikes (training only).
        normalize_current: LIF only: parameter-free LayerNorm of the currents ``W x``
            (default: on for LIF; the GSU's gate keeps its own scale).
    """

    @typechecked
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        neuron: str = "lif",
        bias: bool = False,
        recurrent: bool = False,
        decay: float = 0.5,
        threshold: Optional[float] = None,
        membrane_norm: str = "none",
        dropout_rate: float = 0.0,
        normalize_current: Optional[bool] = None,
    ):
        super().__init__()
        self.current_norm = None
        if neuron == "lif":
            if membrane_norm != "none":
                raise OptionError("membrane_norm is a GSU option; neuron 'lif' has none")
            self.linear = torch.nn.Linear(input_size, hidden_size, bias=bias)
            self.neuron = LIFNeuron(
                hidden_size, decay, 1.0 if threshold is None else threshold, recurrent
            )
            if normalize_current is None or normalize_current:
                self.current_norm = torch.nn.LayerNorm(hidden_size, elementwise_affine=False)
        elif neuron == "gsu":
            if recurrent or bias or normalize_current:
                # the GSU cell always has W_hh and b_ih: these LIF switches would mislead
                raise OptionError(
                    "recurrent, bias and normalize_current are LIF options (the GSU "
                    "always has W_hh and b_ih)"
                )
            self.linear = torch.nn.Linear(input_size, 2 * hidden_size)
            self.neuron = GatedSpikingUnit(
                hidden_size, 0.0 if threshold is None else threshold, membrane_norm
            )
        else:
            raise OptionError(f"neuron must be one of {NEURON_TYPES}, got {neuron!r}")
        self.dropout = torch.nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        current = self.linear(x)
        if self.current_norm is not None:
            current = self.current_norm(current)
        return self.dropout(self.neuron(current, valid))


class SpikingLayerStack(torch.nn.Module):
    """``num_layers`` spiking layers of ``hidden_size`` neurons.

    Args:
        input_size: Width of the first layer's input.
        hidden_size: Neurons per layer H.
        num_layers: Number of layers.
        **layer_options: Passed to every :class:`SpikingLayer`.
    """

    @typechecked
    def __init__(self, input_size: int, hidden_size: int, num_layers: int, **layer_options):
        super().__init__()
        if num_layers < 1:
            raise OptionError(f"num_layers must be >= 1, got {num_layers}")
        if hidden_size < 1:
            raise OptionError(f"hidden_size must be >= 1, got {hidden_size}")
        self.layers = torch.nn.ModuleList(
            SpikingLayer(input_size if i == 0 else hidden_size, hidden_size, **layer_options)
            for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, valid)
        return x

    def costs(
        self, frames: int, prefix: str = "", first_source: Optional[str] = None,
        ann: bool = False,
    ) -> List[LayerCost]:
        """Multiply-accumulates of the stack for ``frames`` frames (paper Eq. 16-17).

        Each ``Linear`` is fed by the previous layer's neuron (``first_source`` for the
        first: None when its input is real-valued); a recurrent matrix is fed by its
        own neuron's spikes of the previous frame. ``ann``: all MACs (no source).
        """
        costs = []
        source = first_source
        for index, layer in enumerate(self.layers):
            name = f"{prefix}layers.{index}"
            linear = layer.linear
            costs.append(LayerCost(
                f"{name}.linear", frames * linear.in_features * linear.out_features,
                None if ann else source,
            ))
            recurrent = layer.neuron.recurrent
            if recurrent is not None:
                costs.append(LayerCost(
                    f"{name}.neuron.recurrent",
                    frames * recurrent.in_features * recurrent.out_features,
                    None if ann else f"{name}.neuron",
                ))
            source = f"{name}.neuron"
        return costs
