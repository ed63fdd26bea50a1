"""Table I/II reconciliation: the shipped paper-size configs priced under the project's
convention (Eq. 16, encoder blocks only, ANN Transformer, 4.6 pJ per MAC) at fixed
lengths; the numbers quoted in docs/energy.md come from here."""

import pytest
import yaml

from helpers import REPO
from espnet_imlspike.energy.flops import encoder_costs

AISHELL = {"30.35m": 10.39, "46.11m": 15.58, "61.89m": 20.78}  # Table I, ANN rows (mJ)
LIBRISPEECH = 32.82  # Table II, Transformer 99.36M


def encoder(path, spiking=False):
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

    from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder

    conf = yaml.safe_load(path.read_text())["encoder_conf"]
    return (IMLSpikeformerEncoder if spiking else TransformerEncoder)(80, **conf)


def energy_mj(enc, in_frames, out_frames, front=False):
    costs = encoder_costs(enc, in_frames, out_frames, ann=True)
    return 4.6e-9 * sum(c.flops for c in costs if front or not c.name.startswith("embed."))


@pytest.fixture(scope="module")
def aishell():
    return {size: encoder(REPO / f"conf/asr/aishell/train_asr_transformer_{size}.yaml")
            for size in AISHELL}


def test_aishell_size_ratios_under_the_blocks_convention(aishell):
    # 4.4 s at ESPnet's default hop (128 samples at 16 kHz): 551 frames, 137 after conv2d
    frames = 1 + int(4.4 * 16000) // 128
    assert (frames, ((frames - 1) // 2 - 1) // 2) == (551, 137)
    energy = {size: energy_mj(enc, frames, 137) for size, enc in aishell.items()}
    ratios = {size: round(e / energy["30.35m"], 2) for size, e in energy.items()}
    assert ratios == {"30.35m": 1.0, "46.11m": 1.95, "61.89m": 2.95}
    # the paper's Table I: x1.50 and x2.00, which the convention cannot give at one length:
    # per block 4 L D^2 + 2 L^2 D + 2 L D U, so the 46.11M ratio (12 blocks, U 4608) is
    # (4D + 2L + 2 x 4608) / (4D + 2L + 2 x 2048): 1.50 only at L = 2560 frames (82 s),
    # where the 61.89M model (24 blocks, U 3328) costs x2.50; it reaches x2.00 only as
    # L grows without bound
    assert round(AISHELL["46.11m"] / AISHELL["30.35m"], 2) == 1.50
    assert round(AISHELL["61.89m"] / AISHELL["30.35m"], 2) == 2.00
    e = {size: energy_mj(enc, 4 * 2560 + 3, 2560) for size, enc in aishell.items()}
    assert e["46.11m"] / e["30.35m"] == pytest.approx(1.5)
    assert e["61.89m"] / e["30.35m"] == pytest.approx(2.5)
    for length in (50, 137, 300, 600, 2000, 10000):
        e = {size: energy_mj(enc, 4 * length + 3, length) for size, enc in aishell.items()}
        assert e["61.89m"] / e["30.35m"] > 2.0
    # the 30.35M row is reproduced at 136-137 encoder frames (4.4 s)
    assert round(energy_mj(aishell["30.35m"], 547, 136), 2) == 10.36
    assert round(energy["30.35m"], 2) == 10.44
    assert energy_mj(aishell["30.35m"], 547, 136) < AISHELL["30.35m"] < energy["30.35m"]
    # the 46.11M and 61.89M rows at the same length: 20.35 and 30.80 mJ (paper 15.58, 20.78)
    assert (round(energy["46.11m"], 2), round(energy["61.89m"], 2)) == (20.35, 30.80)
    # with the convolutional front the 30.35M model costs far more than the paper's row
    assert round(energy_mj(aishell["30.35m"], frames, 137, front=True), 2) == 18.40


def test_spiking_configs_have_the_transformer_ann_costs(aishell):
    """The ANN twin of each IML-Spikeformer config is the Transformer of that size."""
    for size, name in (("30.35m", "train_asr_iml_spikeformer.yaml"),
                       ("46.11m", "train_asr_iml_spikeformer_46.11m.yaml"),
                       ("61.89m", "train_asr_iml_spikeformer_61.89m.yaml")):
        snn = encoder(REPO / "conf/asr/aishell" / name, spiking=True)
        assert energy_mj(snn, 551, 137) == pytest.approx(energy_mj(aishell[size], 551, 137))


def test_librispeech_row_at_about_7_4_seconds():
    enc = encoder(REPO / "conf/asr/librispeech/train_asr_transformer_e18.yaml")
    # conv2d6: ((n - 1) // 2 - 2) // 3; 735 frames (7.35 s at a 10 ms hop) -> 121
    assert ((735 - 1) // 2 - 2) // 3 == 121
    low, high = energy_mj(enc, 735, 121), energy_mj(enc, 741, 122)
    assert (round(low, 2), round(high, 2)) == (32.76, 33.04)
    assert low < LIBRISPEECH < high


def test_hypothesis_ann_energy_linear_in_total_parameters():
    """Not a claim: Table I's three ANN energies lie on E = a (P + b), P in millions."""
    a = (AISHELL["61.89m"] - AISHELL["30.35m"]) / (61.89 - 30.35)
    b = AISHELL["30.35m"] / a - 30.35
    assert (round(a, 4), round(b, 2)) == (0.3294, 1.19)
    assert round(a * (46.11 + b), 2) == AISHELL["46.11m"]  # the third row, to 2 decimals
    assert round(a * (99.36 + b), 2) == 33.12  # the LibriSpeech Transformer: paper 32.82
    # with the rounded constants 0.329 mJ and 1.2M the rows miss by 0.01-0.02 mJ
    assert [round(0.329 * (p + 1.2), 2) for p in (30.35, 46.11, 61.89, 99.36)] == [
        10.38, 15.56, 20.76, 33.08]
    # the VGG-BiLSTM row (93.26M, 33.42 mJ) is not on the line
    assert round(a * (93.26 + b), 2) == 31.11
