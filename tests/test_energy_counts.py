"""Counted accumulates of the spike-train execution: they add up over utterances, the
attention parts are split exactly, and the report attributes the gap to the estimate."""

import pytest
import torch

from espnet_imlspike.deploy.convert import convert_encoder
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.energy.attention_parts import attention_parts, split_measured
from espnet_imlspike.energy.measure import build_report, measure

HEADS, SIZE = 4, 32


@pytest.fixture(scope="module")
def deploy():
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(20, output_size=SIZE, attention_heads=HEADS,
                                    linear_units=64, num_blocks=2)
    encoder.train()
    encoder(torch.randn(4, 60, 20), torch.tensor([60, 50, 40, 30]))
    return convert_encoder(encoder.eval())


UTTS = {"a": torch.randn(50, 20), "b": torch.randn(37, 20) * 2, "c": torch.randn(29, 20)}


def counted(deploy, keys):
    """Run the report's measurement (attention-map hook on) and return the counter."""
    deploy.counter.counts.clear()
    deploy.counter.enabled = True
    result = measure(deploy, deploy, [(k, UTTS[k]) for k in keys],
                     lambda m, x, n: m(x, n), progress=False)
    deploy.counter.enabled = False
    assert result.recorder.attention  # the map hook ran (and recomputed a map)
    return {k: dict(v) for k, v in deploy.counter.counts.items()}, result


def test_counted_operations_add_up_over_utterances(deploy):
    both, _ = counted(deploy, ["a", "b"])
    a, _ = counted(deploy, ["a"])
    b, _ = counted(deploy, ["b"])
    assert set(both) == set(a) == set(b)
    for layer in both:
        for kind in both[layer]:
            assert both[layer][kind] == a[layer].get(kind, 0) + b[layer].get(kind, 0), (
                layer, kind)


def test_attention_parts_and_bias_terms_by_hand(deploy):
    counts, result = counted(deploy, ["a", "b", "c"])
    # independent per-utterance spike counts from hooks on the neurons themselves
    inputs, values = [], []
    block = deploy.encoders[1]

    def keep(store):
        def hook(module, args, output):
            store.append((float(output[args[1]].sum()), int(args[1].sum())))
        return hook

    handles = [block.attn_input_neuron.register_forward_hook(keep(inputs)),
               block.self_attn.value_neuron.register_forward_hook(keep(values))]
    with torch.no_grad():
        for key in ("a", "b", "c"):
            x = UTTS[key]
            deploy(x[None], torch.tensor([x.size(0)]))
    for handle in handles:
        handle.remove()
    parts = attention_parts(deploy, result.recorder)["encoders.1.self_attn"]
    spikes = sum(s for s, _ in inputs)
    assert parts["bias_terms"] == 2 * HEADS * spikes  # 2H per input spike
    assert parts["x_wqk"] == HEADS * SIZE * spikes
    assert parts["scores"] == HEADS * sum(s * n for s, n in inputs)
    assert parts["context"] == sum(v * n for v, n in values)
    assert sum(parts.values()) == counts["encoders.1.self_attn"]["ac"]
    ac = {k: v["ac"] for k, v in counts.items() if "ac" in v}
    split = split_measured(ac, attention_parts(deploy, result.recorder))
    assert "encoders.1.self_attn" not in split and split["encoders.1.self_attn.scores"]
    with pytest.raises(ValueError, match="add up"):
        split_measured({**ac, "encoders.0.self_attn": ac["encoders.0.self_attn"] + 1},
                       attention_parts(deploy, result.recorder))


def test_report_shows_attention_parts_and_attributes_the_gap(deploy):
    counts, result = counted(deploy, ["a", "b", "c"])
    report, text = build_report(deploy, result.recorder, result.lengths, 1,
                                measured=counts)
    layers = {l["name"]: l for l in report["models"][1]["layers"]}
    measured = report["measured_ac"]
    bias = quadratic = 0
    for name, layer in layers.items():
        if layer["operation"] != "AC":
            continue
        got, estimate = measured[name], layer["estimated_ac"]
        if name.endswith((".scores", ".context")):
            quadratic += got - estimate
        else:  # linear in the length: Eq. 17 with the pooled rate is exact
            assert got == pytest.approx(estimate, rel=1e-9), name
    bias = sum(v for k, v in measured.items() if k.endswith("bias_terms"))
    assert bias == 2 * HEADS * sum(result.recorder.layers[f"encoders.{i}.attn_input_neuron"]
                                   .spikes for i in range(2))
    gap = report["accumulates"]["measured"] - report["accumulates"]["estimated"]
    assert gap == pytest.approx(bias + quadratic)
    assert quadratic != 0  # these utterances fire at different rates
    for part in ("x_wqk", "scores", "context", "bias_terms (2H per input spike)"):
        assert f"| encoders.0.self_attn.{part} |" in text
    assert f"({bias:+d})" in text and "mean rate" in text
