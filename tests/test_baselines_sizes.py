"""Parameter counts of the baseline configs through ESPnet's ASRTask / SpeakerTask,
the SpecAugment block shared by every AISHELL-1 config, and the registrations."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
AISHELL = REPO / "conf/asr/aishell"
LIBRI = REPO / "conf/asr/librispeech"
VOX = REPO / "conf/spk/voxceleb"

# config -> (vocabulary, exact parameter count, paper's count in M or None)
BASELINES = {
    AISHELL / "train_asr_smlp_lif_22.96m.yaml": (4233, 22_962_450, 22.96),
    AISHELL / "train_asr_vgg_blstm_93.26m.yaml": (4233, 93_256_914, 93.26),
    # stated architecture; the paper's 60.74M / 185.1M / 202.4M are not reachable
    AISHELL / "train_asr_smlp_gsu_31.88m.yaml": (4233, 31_881_490, None),
    LIBRI / "train_asr_smlp_gsu_52.33m.yaml": (5000, 52_326_672, None),
    LIBRI / "train_asr_vgg_blstm_113.96m.yaml": (5000, 113_964_240, None),
}

# ESPnet's aishell recipe (egs2/aishell/asr1/conf/train_asr_conformer.yaml ->
# tuning/train_asr_conformer_e12_amp.yaml)
ESPNET_AISHELL_SPECAUG = {
    "apply_time_warp": True, "time_warp_window": 5, "time_warp_mode": "bicubic",
    "apply_freq_mask": True, "freq_mask_width_range": [0, 27], "num_freq_mask": 2,
    "apply_time_mask": True, "time_mask_width_ratio_range": [0.0, 0.05],
    "num_time_mask": 10,
}


def token_list(folder: Path, size: int) -> Path:
    path = folder / f"tokens_{size}.txt"
    if not path.exists():
        tokens = ["<blank>", "<unk>"] + [f"t{i}" for i in range(size - 3)] + ["<sos/eos>"]
        path.write_text("\n".join(tokens) + "\n")
    return path


def asr_count(config: Path, vocab: int, folder: Path, overrides=None):
    """(total parameters, encoder) of the model ESPnet's ASRTask builds from ``config``."""
    from espnet2.tasks.asr import ASRTask

    if overrides:
        conf = yaml.safe_load(config.read_text())
        conf["encoder_conf"].update(overrides)
        config = folder / f"override_{config.name}"
        config.write_text(yaml.safe_dump(conf))
    args = ASRTask.get_parser().parse_args(
        ["--config", str(config), "--token_list", str(token_list(folder, vocab))]
    )
    model = ASRTask.build_model(args)
    return sum(p.numel() for p in model.parameters()), model.encoder


@pytest.mark.parametrize("config", list(BASELINES), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_baseline_config_builds_its_parameter_count(config, tmp_path):
    vocab, exact, paper = BASELINES[config]
    count, encoder = asr_count(config, vocab, tmp_path)
    assert count == exact
    assert f"_{round(count / 1e6, 2)}m.yaml" in config.name  # the name says the size
    if paper is not None:
        assert round(count / 1e6, 2) == paper
    kind = yaml.safe_load(config.read_text())["encoder"]
    assert type(encoder).__name__ == {"smlp": "SMLPEncoder", "vgg_rnn": "VGGRNNEncoder"}[kind]


def test_lif_smlp_count_by_hand(tmp_path):
    """conv2d(512) + 3 bias-free 1024-wide layers + readout, plus the 30.35M decoder/CTC."""
    count, encoder = asr_count(AISHELL / "train_asr_smlp_lif_22.96m.yaml", 4233, tmp_path)
    d, h, o = 512, 1024, 256
    front = (9 * d + d) + (9 * d * d + d) + (19 * d * d + d)  # 80 mels -> 19 bins
    layers = d * h + 2 * h * h  # no bias, no trainable neuron parameter
    readout = h * o + o
    assert sum(p.numel() for p in encoder.parameters()) == front + layers + readout
    decoder_and_ctc = 30_351_890 - 17_619_456  # the 30.35M Transformer minus its encoder
    assert count == front + layers + readout + decoder_and_ctc


@pytest.mark.parametrize(
    "config, vocab, hidden, exact, paper",
    [(AISHELL / "train_asr_smlp_gsu_31.88m.yaml", 4233, 1953, 60_744_232, 60.74),
     (LIBRI / "train_asr_smlp_gsu_52.33m.yaml", 5000, 3729, 185_088_806, 185.1)],
    ids=["aishell-60.74M", "librispeech-185.1M"],
)
def test_gsu_width_that_would_match_the_papers_count(config, vocab, hidden, exact, paper,
                                                     tmp_path):
    """The documented width at which the GSU SMLP has the paper's count (not shipped)."""
    count, _ = asr_count(config, vocab, tmp_path,
                         {"hidden_size": hidden, "membrane_norm": "layernorm"})
    assert count == exact
    assert round(count / 1e6, 2 if paper < 100 else 1) == paper


def test_gsu_configs_are_the_lif_model_with_gsu_neurons():
    lif = yaml.safe_load((AISHELL / "train_asr_smlp_lif_22.96m.yaml").read_text())
    gsu = yaml.safe_load((AISHELL / "train_asr_smlp_gsu_31.88m.yaml").read_text())
    lif_only = {"decay", "recurrent", "bias", "threshold", "normalize_current"}
    gsu_only = {"neuron", "threshold", "membrane_norm"}
    shared = {k: v for k, v in lif["encoder_conf"].items() if k not in lif_only | gsu_only}
    assert shared == {k: v for k, v in gsu["encoder_conf"].items()
                      if k not in lif_only | gsu_only}
    assert dict(lif, encoder_conf=None) == dict(gsu, encoder_conf=None)
    assert gsu["encoder_conf"]["hidden_size"] == 1024 and gsu["encoder_conf"]["num_layers"] == 3


def test_every_aishell_config_trains_with_espnets_aishell_specaug():
    configs = sorted(AISHELL.glob("train_*.yaml"))
    assert len(configs) >= 18
    for config in configs:
        conf = yaml.safe_load(config.read_text())
        assert conf.get("specaug") == "specaug", config.name
        assert conf["specaug_conf"] == ESPNET_AISHELL_SPECAUG, config.name


def test_spiking_leaf_sid_config_is_0_9m_without_the_class_matrix():
    from espnet2.tasks.spk import SpeakerTask

    args = SpeakerTask.get_parser().parse_args(
        ["--config", str(VOX / "train_sid_spiking_leaf_0.9m.yaml"), "--spk_num", "1251"]
    )
    model = SpeakerTask.build_model(args)
    parts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    extractor = sum(v for k, v in parts.items() if k != "loss")
    assert type(model.frontend).__name__ == "SpikingLeafFrontend"
    assert type(model.encoder).__name__ == "SMLPSpeakerEncoder"
    assert parts["loss"] == 1251 * 192  # AAM-softmax class matrix
    assert extractor == 908_392 and round(extractor / 1e6, 1) == 0.9
    # by hand: filter bank 3 x 40, affine 2 x 40, IHC-LIF 4 x 40 + 40 x 40 lateral;
    # 2 recurrent LIF layers (40 -> 512, 512 -> 512, bias-free, V 512 x 512 each);
    # rawnet3 projector: BatchNorm(512) + Linear(512, 192)
    front = 3 * 40 + 2 * 40 + 4 * 40 + 40 * 40
    encoder = 40 * 512 + 512 * 512 + 512 * 512 + 512 * 512
    projector = 2 * 512 + 512 * 192 + 192
    assert extractor == front + encoder + projector


def test_registered_in_espnets_task_registries():
    import espnet2.tasks.asr as asr_task
    import espnet2.tasks.spk as spk_task

    from espnet_imlspike.encoders.smlp import SMLPEncoder, SMLPSpeakerEncoder
    from espnet_imlspike.frontends.spiking_leaf import SpikingLeafFrontend

    assert asr_task.encoder_choices.get_class("smlp") is SMLPEncoder
    assert spk_task.encoder_choices.get_class("smlp") is SMLPSpeakerEncoder
    assert spk_task.frontend_choices.get_class("spiking_leaf") is SpikingLeafFrontend
    assert spk_task.frontend_choices.get_class("default").__name__ == "DefaultFrontend"
