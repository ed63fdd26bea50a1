"""Optional cross-check with NeuroBench (``pip install neurobench``), the community
harness for neuromorphic models: its own hooks count synaptic operations (MACs/ACs) of
Linear/Conv layers and the activation sparsity of neuron layers.

Definitions differ from ours, so equality holds only where they coincide:

* NeuroBench classifies a layer call as spiking (AC) when its input holds only
  {-1, 0, 1}, and counts effective operations: non-zero inputs x non-zero weights,
  biases excluded, padded frames included. In the deploy form's spike-train execution
  every synaptic Linear (``SynapticLinear.synapse``) is called once per binary spike plane,
  so its ACs equal our counted accumulates of those layers on unpadded batches.
* Activation-to-activation products (the fused ``X W_QK X^T`` map, attention weights
  times spiking values, SDSA-3 products) are not Linear layers: NeuroBench does not count
  them; ours does.
* The convolutional front: NeuroBench counts effective MACs (zero inputs after ReLU
  skipped); our FLOPs are dense.
* Activation sparsity = zero outputs / all outputs of the spiking neuron layers (we
  restrict NeuroBench to them: its default also takes the ReLUs of the convolutional
  front), each output a multi-level spike count (one number, however many spikes),
  averaged over batches (here one utterance each) rather than pooled.
"""

from typing import Dict, Tuple

import torch


def neurobench_metrics(model, utterances, run_encoder_input) -> Dict[str, float]:
    """Run NeuroBench's SynapticOperations and ActivationSparsity on ``model.encoder``.

    Args:
        model: ESPnet model whose encoder is (preferably) the deploy form.
        utterances: (key, waveform) pairs, processed one at a time (no padding).
        run_encoder_input: Callable turning a waveform batch into encoder features and
            lengths (e.g. the model's frontend and normaliser).

    Returns:
        NeuroBench's results: Effective_MACs, Effective_ACs, Dense (per utterance
        means) and ActivationSparsity.
    """
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from neurobench.models import TorchModel

    from espnet_imlspike.neurons import SpikingNeuron

    class EncoderOnly(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, feats):
            lengths = torch.full((feats.size(0),), feats.size(1), dtype=torch.long)
            return self.encoder(feats, lengths)[0]

    features = []
    with torch.no_grad():
        for _, wave in utterances:
            feats, _ = run_encoder_input(wave.unsqueeze(0), torch.tensor([wave.numel()]))
            features.append((feats, torch.zeros(1)))
    wrapped = TorchModel(EncoderOnly(model.encoder))
    # only our spiking neuron layers (NeuroBench's default list adds the ReLUs of the
    # convolutional front, which are not spikes)
    wrapped.activation_modules = [SpikingNeuron]
    loader = torch.utils.data.DataLoader(features, batch_size=None)  # already batched
    benchmark = Benchmark(wrapped, loader, [], [],
                          [[], [SynapticOperations, ActivationSparsity]])
    return benchmark.run(quiet=True)


def neurobench_section(model, utterances) -> Tuple[str, Dict]:
    """Markdown section and values for the energy report."""

    def frontend(wave, lengths):
        feats, feat_lengths = model._extract_feats(wave, lengths)
        if model.normalize is not None:
            feats, feat_lengths = model.normalize(feats, feat_lengths)
        return feats, feat_lengths

    values = neurobench_metrics(model, utterances, frontend)
    ops = values.get("SynapticOperations", values)
    lines = [
        "## NeuroBench metrics (its own hooks; see espnet_imlspike/energy/neurobench_metrics.py "
        "for how its definitions differ)",
        "",
        "| Metric | Value |",
        "|---|---|",
    ]
    for key, value in _flatten(values).items():
        lines.append(f"| {key} | {value:.6g} |")
    return "\n".join(lines) + "\n", _flatten(values) | {"raw": str(ops)}


def _flatten(values: Dict) -> Dict[str, float]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            for inner, v in value.items():
                flat[f"{key}.{inner}"] = float(v)
        else:
            flat[key] = float(value)
    return flat
