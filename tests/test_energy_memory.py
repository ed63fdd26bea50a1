"""The memory-aware energy model against a hand count on a one-block model
(D = 4, H = 2, 8 hidden units, L = 3 frames, T = 4, every neuron firing 2 spikes)."""

import pytest
import torch

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.energy.flops import encoder_costs
from espnet_imlspike.energy.memory_model import (
    AccessCosts,
    Tally,
    memory_energy,
    twin_bits,
    utterance_tally,
)

FIFO = 1000


def tiny():
    encoder = IMLSpikeformerEncoder(16, output_size=4, attention_heads=2, linear_units=8,
                                    num_blocks=1, input_layer="linear", timesteps=4)
    costs = [c for c in encoder_costs(encoder, 3, 3) if not c.name.startswith("embed")]
    ann = [c for c in encoder_costs(encoder, 3, 3, ann=True) if not c.name.startswith("embed")]
    neurons = {}
    for name, channels in (("encoders.0.attn_input_neuron", 4),
                           ("encoders.0.self_attn.value_neuron", 4),
                           ("encoders.0.self_attn.attention_neuron", 4),
                           ("encoders.0.mlp_input_neuron", 4),
                           ("encoders.0.feed_forward.hidden_neuron", 8)):
        neurons[name] = {"channels": channels, "timesteps": 4, "rate": 0.5,
                         "nonzero_fraction": 1.0, "adaptive": True, "leak": 1.0}
    return costs, ann, neurons


def accesses(tally):
    return {key: words for key, words in tally.accesses.items() if words}


def test_spike_train_counts_by_hand():
    costs, _, neurons = tiny()
    t = utterance_tally(costs, neurons, "spike_train", FIFO)
    # events: 2 spikes x 3 frames x 4 channels = 24 into every layer but w_2 (48).
    # synops: x_wqk 24 x (H D + 2H = 12), scores 24 x H L (6), linear_v 24 x 4,
    # context 24 x L (3), linear_out 24 x 4, w_1 24 x 8, w_2 48 x 4
    synops = 288 + 144 + 96 + 72 + 96 + 192 + 192
    biases = 12 + 12 + 24 + 12  # L x out of v, out, w_1, w_2
    resets = 4 * 24 + 48  # one per output spike
    assert (t.adds, t.muls, t.address) == (synops + biases + resets, 0, synops)
    assert accesses(t) == {
        ("in_out", FIFO): 6 * 24 + 48 + 4 * 24 + 48,  # input events + spike messages
        ("weights", 32): 288, ("weights", 24): 144, ("weights", 20): 2 * (96 + 12),
        ("weights", 18): 72, ("weights", 40): 192 + 24, ("weights", 36): 192 + 12,
        # read + write per synapse reached; T reads + writes per neuron and step
        ("membrane", 24): 2 * 24 * 8 + 2 * 24 * 8 + 8 * 24,
        ("membrane", 18): 2 * 24 * 6,
        ("membrane", 12): 2 * 24 * 4 + 2 * 24 * 3 + 2 * 24 * 4 + 2 * 48 * 4 + 4 * 8 * 12,
        ("threshold", 4): 4 * 4 * 12, ("threshold", 8): 4 * 24,
    }


def test_quantised_twin_counts_by_hand():
    costs, _, neurons = tiny()
    t = utterance_tally(costs, neurons, "multi_level", FIFO)
    # one event per non-zero count: 12 per layer (24 into w_2); a MAC per synapse
    synops = 144 + 72 + 48 + 36 + 48 + 96 + 96
    assert t.address == synops
    assert t.adds == synops + 12 + 12 + 24 + 12
    assert t.muls == synops + 4 * 12 + 24  # + one quantising multiply per neuron
    assert accesses(t) == {
        ("in_out", FIFO): 6 * 12 + 24 + 4 * 12 + 24,
        ("weights", 32): 144, ("weights", 24): 72, ("weights", 20): 2 * 60,
        ("weights", 18): 36, ("weights", 40): 120, ("weights", 36): 108,
        ("membrane", 24): 192 + 192 + 24, ("membrane", 18): 144,
        ("membrane", 12): 96 + 72 + 96 + 192 + 4 * 12,
        ("threshold", 4): 4 * 12, ("threshold", 8): 24,
    }
    assert twin_bits(4) == 3 and twin_bits(6) == 3 and twin_bits(7) == 3
    assert twin_bits(8) == 4 and twin_bits(1) == 1


def test_ann_counts_by_hand():
    _, ann, _ = tiny()
    t = utterance_tally(ann, {}, "ann", FIFO)
    # q, k, v, out: 3 x 4 x 4 MACs each; Q K^T and A V: L^2 D = 36; w_1, w_2: 96
    macs = 4 * 48 + 36 + 36 + 96 + 96
    assert t.muls == macs
    assert t.adds == macs + 4 * 12 + 24 + 12  # + bias additions
    assert t.address == 4 * 24 + 30 + 30 + 36 + 36  # inputs + outputs
    assert accesses(t) == {
        ("in_out", 12): 4 * 24 + 12 + 12 + 12 + 12, ("in_out", 18): 36,
        ("in_out", 24): 48,
        ("weights", 20): 4 * 60, ("weights", 12): 72, ("weights", 40): 120,
        ("weights", 36): 108,
    }


def test_sram_cost_interpolation_and_energy_units():
    costs = AccessCosts()
    assert costs.per_byte(0) == 0
    assert costs.per_byte(4 * 1024) == pytest.approx(1.25)
    assert costs.per_byte(8 * 1024) == pytest.approx(2.5)
    assert costs.per_byte(20 * 1024) == pytest.approx(3.75)
    assert costs.per_byte(32 * 1024) == pytest.approx(5.0)
    assert costs.per_byte(1024 * 1024) == pytest.approx(25.0)
    assert costs.per_byte(64 * 1024 * 1024) == pytest.approx(25.0)  # flat beyond 1 MiB
    t = Tally()
    t.adds, t.muls, t.address = 10, 2, 5
    t.access("weights", 100, 2048)  # 400 bytes at an 8 KiB buffer: 2.5 pJ/byte
    parts = t.energy_pj(costs)
    assert parts["ops"] == pytest.approx(10 * 0.1 + 2 * 3.1)
    assert parts["addressing"] == pytest.approx(0.5)
    assert parts["weights"] == pytest.approx(400 * 2.5)
    other = AccessCosts(e_add_pj=1.0, word_bytes=2)  # configurable
    assert other.e_add_pj == 1.0 and Tally().energy_pj(other)["ops"] == 0


def test_memory_energy_means_per_utterance_and_per_second():
    costs, _, neurons = tiny()
    one = utterance_tally(costs, neurons, "spike_train", FIFO)
    pj = sum(one.energy_pj(AccessCosts()).values())
    result = memory_energy([costs, costs], neurons, "spike_train", seconds=[0.5, 1.5])
    assert result["energy_mj"] == pytest.approx(pj / 1e9)
    assert result["mj_per_second"] == pytest.approx(2 * pj / 1e9 / 2.0)
    assert sum(result["parts_mj"].values()) == pytest.approx(result["energy_mj"])
    with pytest.raises(ValueError, match="semantics"):
        memory_energy([costs], neurons, "binary")


def test_report_carries_the_memory_model_and_the_counting_semantics():
    from espnet_imlspike.energy.measure import build_report, measure

    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(16, output_size=8, attention_heads=2, linear_units=16,
                                    num_blocks=1)
    encoder.train()
    encoder(torch.randn(2, 40, 16), torch.tensor([40, 30]))
    result = measure(encoder.eval(), encoder, [("a", torch.randn(30, 16))],
                     lambda m, x, n: m(x, n), progress=False)
    report, text = build_report(encoder, result.recorder, result.lengths, 1, seconds=[0.3])
    memory = report["memory_model"]["results"]
    assert set(memory) == {f"{s}_{k}" for s in ("ann", "spike_train", "multi_level")
                           for k in ("blocks", "with_front")}
    assert memory["ann_with_front"]["energy_mj"] > memory["ann_blocks"]["energy_mj"]
    assert memory["spike_train_blocks"]["mj_per_second"] == pytest.approx(
        memory["spike_train_blocks"]["energy_mj"] / 0.3)
    assert "count-weighted" in text and "binary expansion" in text
    assert "3-bit quantised twin" in text
