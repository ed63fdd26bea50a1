"""Optional cross-check with NeuroBench (``pip install neurobench``), the community
harness for neuromorphic models: its own hooks count synaptic operations of its
connection layers (Linear, Conv, RNN cells) and the activation sparsity of neuron
layers. The report prints our values beside NeuroBench's, per utterance:

* **ACs of the synaptic linear layers.** NeuroBench calls a layer's input spiking (AC)
  when it holds only {-1, 0, 1} and counts non-zero inputs x non-zero weights, biases
  excluded. In the deploy form's spike-train execution every synaptic Linear
  (``SynapticLinear.synapse``) is called once per binary spike plane, so this equals our
  counted accumulates of those layers.
* **Effective MACs of the convolutional front.** NeuroBench skips zero inputs (after
  ReLU) and zero weights; ours are counted here independently on the same passes (each
  output's receptive field, unfolded, non-zero input x non-zero weight pairs). Eq. 16
  prices the front densely (its FLOPs).
* **Dense operations.** NeuroBench's ``Dense`` (all inputs and weights taken as
  non-zero) of the front plus T calls of every synaptic Linear: our FLOPs of the front
  plus T x the FLOPs of those layers.
* **Activation sparsity**: zero outputs / all outputs of the spiking neuron layers (we
  restrict NeuroBench to them; its default also takes the front's ReLUs), each output a
  multi-level spike count (one number, however many spikes), averaged over batches
  (here one utterance each).

Where NeuroBench cannot count: the activation-by-activation products (the fused
``X W_QK`` and ``(X W_QK) X^T``, the bias terms, attention weights times value spikes,
SDSA-3's products) are tensor products, not connection modules, so its hooks never see
them; neuron updates of our neurons (its ``MembraneUpdates`` reads snnTorch state);
padded frames (it counts them; we run one utterance per batch, so there are none).
"""

from typing import Dict, List, Optional, Tuple

import torch

from espnet_imlspike.energy.flops import encoder_costs

ATTENTION_PARTS = (".x_wqk", ".scores", ".bias_terms", ".context", ".key_value", ".query_kv")


def effective_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Non-zero input x non-zero weight pairs of one Conv2d or Linear call (biases out)."""
    weight = (module.weight != 0).to(torch.float64)
    if isinstance(module, torch.nn.Conv2d):
        cols = torch.nn.functional.unfold(
            (x != 0).to(torch.float64), module.kernel_size, module.dilation,
            module.padding, module.stride)  # (N, C k k, positions)
        return int((weight.flatten(1) @ cols).sum())
    return int(((x != 0).to(torch.float64) @ weight.t()).sum())


def neurobench_metrics(model, utterances, run_encoder_input) -> Dict:
    """Run NeuroBench's SynapticOperations and ActivationSparsity on ``model.encoder``,
    and our own effective-MAC count of the front on the same forward passes.

    Returns:
        NeuroBench's results plus ``ours_front_effective_macs`` (per utterance mean) and
        ``lengths`` [(input frames, output frames)] of each utterance.
    """
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from neurobench.models import TorchModel

    from espnet_imlspike.neurons import SpikingNeuron

    lengths: List[Tuple[int, int]] = []
    front_effective = [0]

    class EncoderOnly(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, feats):
            ilens = torch.full((feats.size(0),), feats.size(1), dtype=torch.long)
            out, olens, _ = self.encoder(feats, ilens)
            lengths.append((feats.size(1), int(olens[0])))
            return out

    def count_front(module, inputs, output):
        # NeuroBench deep-copies a layer (with its hooks) to count: skip those copies
        if any(module is m for m in front):
            front_effective[0] += effective_macs(module, inputs[0])

    features = []
    with torch.no_grad():
        for _, wave in utterances:
            feats, _ = run_encoder_input(wave.unsqueeze(0), torch.tensor([wave.numel()]))
            features.append((feats, torch.zeros(1)))
    embed = getattr(model.encoder, "embed", None)
    front = [m for m in (embed.modules() if embed is not None else [])
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(count_front) for m in front]
    wrapped = TorchModel(EncoderOnly(model.encoder))
    # only our spiking neuron layers (NeuroBench's default list adds the ReLUs of the
    # convolutional front, which are not spikes)
    wrapped.activation_modules = [SpikingNeuron]
    loader = torch.utils.data.DataLoader(features, batch_size=None)  # already batched
    benchmark = Benchmark(wrapped, loader, [], [],
                          [[], [SynapticOperations, ActivationSparsity]])
    try:
        results = benchmark.run(quiet=True)
    finally:
        for handle in handles:
            handle.remove()
    results["ours_front_effective_macs"] = front_effective[0] / max(1, len(features))
    results["lengths"] = lengths
    return results


def ours_beside(results: Dict, report: Dict, encoder) -> List[Tuple[str, float, object, str]]:
    """Rows (quantity, ours, NeuroBench's or None, note), per utterance."""
    ops = results["SynapticOperations"]
    lengths = results["lengths"]
    count = max(1, len(lengths))
    timesteps = getattr(encoder, "timesteps", 1)
    measured = report.get("measured_ac", {})
    linear_ac = sum(v for k, v in measured.items()
                    if not k.startswith("embed") and not k.endswith(ATTENTION_PARTS))
    attention_ac = sum(v for k, v in measured.items() if k.endswith(ATTENTION_PARTS))
    dense = 0
    for i, o in lengths:
        for cost in encoder_costs(encoder, i, o):
            if cost.name.startswith("embed."):
                dense += cost.flops
            elif cost.source is not None and not cost.name.endswith(ATTENTION_PARTS):
                dense += timesteps * cost.flops  # one call per binary spike plane
    rows = [
        ("ACs of the synaptic linear layers (counted in spike-train execution)",
         linear_ac / count, ops["Effective_ACs"], "same definition"),
        ("Effective MACs of the convolutional front (zero inputs and weights skipped)",
         results["ours_front_effective_macs"], ops["Effective_MACs"],
         "counted independently on the same passes; Eq. 16 prices the front densely"),
        ("Dense operations: front FLOPs + T x FLOPs of the synaptic linear layers",
         dense / count, ops["Dense"], "our FLOPs against NeuroBench's all-ones count"),
        ("Accumulates of the attention products (x_wqk, scores, bias terms, context)",
         attention_ac / count, None, "NeuroBench cannot count them: tensor products, "
         "not Linear/Conv modules"),
    ]
    if "activation_sparsity" in report:
        rows.append(("Activation sparsity of the neuron layers (mean per utterance)",
                     report["activation_sparsity"], results["ActivationSparsity"],
                     "a multi-level spike count is one output"))
    return rows


def neurobench_section(model, utterances, report: Optional[Dict] = None) -> Tuple[str, Dict]:
    """Markdown section (ours beside NeuroBench's) and values for the energy report."""

    def frontend(wave, lengths):
        feats, feat_lengths = model._extract_feats(wave, lengths)
        if model.normalize is not None:
            feats, feat_lengths = model.normalize(feats, feat_lengths)
        return feats, feat_lengths

    results = neurobench_metrics(model, utterances, frontend)
    rows = ours_beside(results, report or {}, model.encoder)
    lines = [
        "## Ours beside NeuroBench (its own hooks; per utterance)",
        "",
        "| Quantity | ours | NeuroBench | note |",
        "|---|---|---|---|",
    ]
    for what, ours, theirs, note in rows:
        theirs_text = "not counted" if theirs is None else f"{float(theirs):.6g}"
        lines.append(f"| {what} | {ours:.6g} | {theirs_text} | {note} |")
    values = {"rows": [{"quantity": w, "ours": o, "neurobench": None if t is None
                        else float(t), "note": n} for w, o, t, n in rows],
              "raw": {k: v for k, v in results.items() if k != "lengths"}}
    return "\n".join(lines) + "\n", values
