"""The paper's figures for several models: Fig. 3 (per-neuron firing rates across
depth, one panel per firing mechanism) and Fig. 4 (attention maps of the first, middle
and last layers on one colour scale), and the labels of the compared models."""

import pytest
import torch

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.energy.compare import compare_section, model_label
from espnet_imlspike.energy.hooks import FiringRateRecorder
from espnet_imlspike.energy.measure import build_report
from espnet_imlspike.energy.plots import picked_layers, plot_attention_maps, plot_firing_rates

ABLATIONS = (("multistep", "hd_repssa_softmax"), ("mls", "repssa_linear"),
             ("imls", "hd_repssa_linear"))


@pytest.fixture(scope="module")
def recorded():
    torch.manual_seed(0)
    out = []
    for firing, attention in ABLATIONS:
        encoder = IMLSpikeformerEncoder(16, output_size=16, attention_heads=4,
                                        linear_units=32, num_blocks=3, firing=firing,
                                        attention=attention, timesteps=4)
        encoder.train()
        encoder(torch.randn(2, 60, 16), torch.tensor([60, 40]))
        encoder.eval()
        with FiringRateRecorder(encoder, attention_maps=True) as recorder, torch.no_grad():
            _, olens, _ = encoder(torch.randn(1, 50, 16), torch.tensor([50]))
        out.append((encoder, recorder, [(50, int(olens[0]))]))
    return out


def test_labels_name_the_mechanism_and_hdm(recorded):
    labels = [model_label(encoder, "x") for encoder, _, _ in recorded]
    assert labels == ["multi-step, T=4, HD-RepSSA_S (HDM)", "MLS, T=4, RepSSA_L (no HDM)",
                      "IMLS, T=4, HD-RepSSA_L (HDM)"]
    assert model_label(torch.nn.Linear(1, 1), "fallback") == "fallback"


def test_first_middle_last_layers():
    assert picked_layers(list("abcdefghijkl")) == [0, 5, 11]  # layers 1, 6, 12
    assert picked_layers(["a"]) == [0]


def test_figures_for_three_models(recorded, tmp_path):
    firing = [(model_label(e, ""), r.layers) for e, r, _ in recorded]
    plot_firing_rates(firing, tmp_path / "fig3.png")
    maps = [(model_label(e, ""), r.attention) for e, r, _ in recorded]
    plot_attention_maps(maps, tmp_path / "fig4.png")
    from PIL import Image

    for name in ("fig3.png", "fig4.png"):
        width, height = Image.open(tmp_path / name).size
        assert width >= 1800  # 7.2 in at 300 dpi (a two-column page), minus the margins
    # Fig. 4: three models x three layers of maps, four heads each
    assert Image.open(tmp_path / "fig4.png").size[1] > Image.open(tmp_path / "fig3.png").size[1]


def test_compare_section_lists_every_model_and_the_ranges(recorded):
    entries = []
    for encoder, recorder, lengths in recorded:
        report, _ = build_report(encoder, recorder, lengths, 1, seconds=[0.5])
        entries.append((model_label(encoder, ""), report))
    text, values = compare_section(entries)
    for label, _ in entries:
        assert f"| {label} |" in text
    eq17 = [r["eq17_blocks_mj"] for r in values["models"]]
    assert values["ranges"]["eq17_blocks_mj"] == [min(eq17), max(eq17)]
    spike = [r["memory_spike_train_blocks_mj"] for r in values["models"]]
    assert values["ranges"]["memory_spike_train_blocks_mj"] == [min(spike), max(spike)]
    # the quantised twin exists only for multi-level spikes (not the multi-step model)
    assert values["models"][0]["memory_multi_level_blocks_mj"] is None
    assert values["models"][2]["memory_multi_level_blocks_mj"] > 0
    assert "Range across the models" in text and "with front" in text
