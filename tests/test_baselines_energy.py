"""The energy report prices the SMLP baselines: FLOPs against a hand count, Eq. 16-17
with recorded firing rates, and the report on a model with a spiking front end."""

import pytest
import torch

from espnet_imlspike.encoders.smlp import SMLPEncoder, SMLPSpeakerEncoder
from espnet_imlspike.energy.flops import encoder_costs
from espnet_imlspike.energy.hooks import FiringRateRecorder
from espnet_imlspike.energy.report import EnergyConstants, model_energy


def lif_paper_encoder():
    """The encoder of conf/asr/aishell/train_asr_smlp_lif_22.96m.yaml."""
    return SMLPEncoder(80, output_size=256, hidden_size=1024, num_layers=3, neuron="lif",
                       input_layer="conv2d", input_layer_size=512)


def test_lif_smlp_flops_by_hand():
    # 626 fbank frames (5 s): conv 3x3/2 -> 312 x 39, conv 3x3/2 -> 155 x 19
    costs = {c.name: (c.flops, c.source) for c in
             encoder_costs(lif_paper_encoder(), 626, 155)}
    assert costs == {
        "embed.conv.0": (312 * 39 * 512 * 1 * 9, None),
        "embed.conv.2": (155 * 19 * 512 * 512 * 9, None),
        "embed.out": (155 * 19 * 512 * 512, None),
        # the first layer sees the real-valued subsampled features: MACs
        "stack.layers.0.linear": (155 * 512 * 1024, None),
        # every later synaptic layer is driven by the previous layer's spikes
        "stack.layers.1.linear": (155 * 1024 * 1024, "stack.layers.0.neuron"),
        "stack.layers.2.linear": (155 * 1024 * 1024, "stack.layers.1.neuron"),
        "readout": (155 * 1024 * 256, "stack.layers.2.neuron"),
    }
    ann = encoder_costs(lif_paper_encoder(), 626, 155, ann=True)
    assert all(c.source is None for c in ann)
    assert [c.flops for c in ann] == [costs[c.name][0] for c in ann]


def test_gsu_smlp_flops_include_both_gates_and_the_recurrence():
    encoder = SMLPEncoder(80, output_size=256, hidden_size=1024, num_layers=3,
                          neuron="gsu", input_layer_size=512)
    costs = {c.name: (c.flops, c.source) for c in encoder_costs(encoder, 626, 155)}
    assert costs["stack.layers.0.linear"] == (155 * 512 * 2048, None)
    assert costs["stack.layers.1.linear"] == (155 * 1024 * 2048, "stack.layers.0.neuron")
    for i in range(3):  # W_hh s[t-1], fed by the layer's own spikes
        assert costs[f"stack.layers.{i}.neuron.recurrent"] == (
            155 * 1024 * 2048, f"stack.layers.{i}.neuron")


def test_energy_of_the_smlp_follows_eq_16_17_with_recorded_rates():
    torch.manual_seed(0)
    encoder = SMLPEncoder(20, output_size=8, hidden_size=16, num_layers=2,
                          input_layer_size=8, decay=0.5, threshold=0.2).eval()
    feats = torch.randn(1, 40, 20) * 2
    with FiringRateRecorder(encoder) as recorder, torch.no_grad():
        _, olens, _ = encoder(feats, torch.tensor([40]))
    rates = {name: layer.rate for name, layer in recorder.layers.items()}
    assert set(rates) == {"stack.layers.0.neuron", "stack.layers.1.neuron"}
    assert 0 < rates["stack.layers.0.neuron"] < 1
    costs = [c for c in encoder_costs(encoder, 40, int(olens[0]))
             if not c.name.startswith("embed.")]
    pj = EnergyConstants()
    energy = model_energy([costs], rates, encoder.timesteps, pj)["energy_mj"]
    frames = int(olens[0])
    by_hand = (frames * 8 * 16 * pj.e_mac_pj  # layer 0: MAC
               + 1 * rates["stack.layers.0.neuron"] * frames * 16 * 16 * pj.e_ac_pj
               + 1 * rates["stack.layers.1.neuron"] * frames * 16 * 8 * pj.e_ac_pj)
    assert energy == pytest.approx(by_hand / 1e9)


def test_energy_report_builds_for_the_spiking_leaf_back_end():
    """Spikes from the front end enter the encoder: its first layer is priced as ACs."""
    from espnet_imlspike.energy.measure import build_report

    torch.manual_seed(0)
    encoder = SMLPSpeakerEncoder(8, hidden_size=16, num_layers=2, decay=0.5,
                                 threshold=0.3).eval()
    spikes = (torch.rand(1, 30, 8) < 0.3).float()
    with FiringRateRecorder(encoder) as recorder, torch.no_grad():
        out = encoder(spikes)
    assert out.shape == (1, 16, 30)
    assert recorder.layers["input_spikes"].rate == pytest.approx(float(spikes.mean()))
    report, text = build_report(encoder, recorder, [(30, 30)], parameters=1234,
                                model_name="spiking_leaf")
    snn = next(m for m in report["models"] if m["snn"])
    assert {layer["operation"] for layer in snn["layers"]} == {"AC"}
    assert "spiking_leaf" in text


def test_every_smlp_layer_fires_at_initialisation():
    """Regression: without normalised currents a default LIF layer never fires (and the
    boxcar surrogate then passes no gradient); the shipped defaults fire sparsely."""
    torch.manual_seed(0)
    feats = torch.randn(2, 400, 80)
    for neuron in ("lif", "gsu"):
        encoder = SMLPEncoder(80, neuron=neuron, hidden_size=256, input_layer_size=128).eval()
        with FiringRateRecorder(encoder) as recorder, torch.no_grad():
            encoder(feats, torch.tensor([400, 300]))
        for name, layer in recorder.layers.items():
            assert 0.01 < layer.rate < 0.6, (neuron, name, layer.rate)
    back_end = SMLPSpeakerEncoder(40).eval()  # Spiking-LEAF's recurrent LIF back-end
    with FiringRateRecorder(back_end) as recorder, torch.no_grad():
        back_end((torch.rand(2, 200, 40) < 0.15).float())
    assert all(0.01 < layer.rate < 0.6 for layer in recorder.layers.values())


def test_current_normalisation_is_a_lif_option_without_parameters():
    from espnet_imlspike.errors import OptionError

    plain = SMLPEncoder(80, normalize_current=False)
    normed = SMLPEncoder(80, normalize_current=True)
    assert sum(p.numel() for p in plain.parameters()) == sum(
        p.numel() for p in normed.parameters())
    with pytest.raises(OptionError, match="LIF options"):
        SMLPEncoder(80, neuron="gsu", normalize_current=True)
