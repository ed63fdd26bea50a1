"""Forward hooks that record firing statistics of every spiking neuron layer."""

from contextlib import nullcontext
from typing import Dict, List, Optional

import torch

from espnet_imlspike.errors import InputError
from espnet_imlspike.neurons import SpikingNeuron


class LayerFiring:
    """Spike statistics of one neuron layer, accumulated over valid frames.

    ``spikes``: total spikes; ``neuron_steps``: neurons x frames x T it could have used;
    ``per_neuron``: spikes per channel; ``frames``: valid frames seen (times T for
    multi-step neurons, which see each frame once per step); ``nonzero``: outputs > 0.
    ``calls``: (spikes, nonzero outputs, outputs, valid frames) of each forward call, in
    order (one call per utterance in the energy report), for counts that weight each
    utterance's spikes by its own length (the ``L^2`` attention products).
    """

    def __init__(self, channels: int, timesteps: int, multistep: bool):
        self.channels = channels
        self.timesteps = timesteps
        self.multistep = multistep
        self.spikes = 0.0
        self.nonzero = 0
        self.outputs = 0
        self.frames = 0
        self.per_neuron = torch.zeros(channels, dtype=torch.float64)
        self.calls: List[tuple] = []

    @property
    def neuron_steps(self) -> float:
        steps = 1 if self.multistep else self.timesteps
        return float(self.frames) * self.channels * steps

    @property
    def rate(self) -> float:
        """R_l: spikes per neuron per timestep."""
        return self.spikes / self.neuron_steps if self.frames else 0.0

    def per_neuron_rate(self) -> torch.Tensor:
        steps = 1 if self.multistep else self.timesteps
        return self.per_neuron / max(1, self.frames * steps)

    def add(self, spikes: torch.Tensor, valid: Optional[torch.Tensor]) -> None:
        spikes = spikes.detach().to(torch.float64)
        if valid is None:
            valid = torch.ones(spikes.shape[:-1], dtype=torch.bool, device=spikes.device)
        kept = spikes[valid]  # (frames, C)
        call = (float(kept.sum()), int((kept != 0).sum()), kept.numel(), int(valid.sum()))
        self.calls.append(call)
        self.spikes += call[0]
        self.nonzero += call[1]
        self.outputs += call[2]
        self.frames += call[3]
        self.per_neuron += kept.sum(0).cpu()


class FiringRateRecorder:
    """Registers forward hooks on every spiking neuron layer of a model.

    Use as a context manager around the forward passes to record; ``layers`` maps
    module names to :class:`LayerFiring`. Padded frames are ignored through the
    ``valid`` mask each neuron receives.

    Args:
        model: Any module containing our spiking neurons.
        attention_maps: Also keep the attention maps (N, H, L, L) of HD-RepSSA layers
            from the first recorded forward (for plots).
    """

    def __init__(self, model: torch.nn.Module, attention_maps: bool = False):
        self.model = model
        self.layers: Dict[str, LayerFiring] = {}
        self.attention: Dict[str, torch.Tensor] = {}
        self._want_maps = attention_maps
        self._handles: List = []
        self.neurons = {n: m for n, m in model.named_modules() if isinstance(m, SpikingNeuron)}
        if not self.neurons:
            raise InputError(
                f"{type(model).__name__} has no spiking neuron layers: nothing to record"
            )

    def sparsity_per_call(self) -> float:
        """Zero outputs / outputs of all neuron layers in each forward call (one
        utterance in the energy report), averaged over the calls."""
        calls = [layer.calls for layer in self.layers.values()]
        if not calls:
            return 0.0
        per_call = []
        for index in range(min(len(c) for c in calls)):
            nonzero = sum(c[index][1] for c in calls)
            outputs = sum(c[index][2] for c in calls)
            per_call.append(1 - nonzero / max(1, outputs))
        return sum(per_call) / max(1, len(per_call))

    def __enter__(self):
        for name, module in self.neurons.items():
            self._handles.append(module.register_forward_hook(self._firing_hook(name)))
        if self._want_maps:
            for name, module in self.model.named_modules():
                if hasattr(module, "attention_map"):  # HD-RepSSA, training or deploy form
                    self._handles.append(module.register_forward_hook(self._map_hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _firing_hook(self, name: str):
        def hook(module, inputs, output):
            valid = inputs[1] if len(inputs) > 1 else None
            if name not in self.layers:
                self.layers[name] = LayerFiring(
                    output.size(-1),
                    module.timesteps,
                    module.multistep,
                )
            self.layers[name].add(output, valid)

        return hook

    def _map_hook(self, name: str):
        def hook(module, inputs, output):
            if name not in self.attention:
                # recomputed for the plot only: an op counter must not count it twice
                counter = getattr(module, "counter", None)
                with torch.no_grad(), (counter.paused() if counter else nullcontext()):
                    self.attention[name] = module.attention_map(*inputs).detach().cpu()

        return hook
