"""Real training must not be corrupted: non-finite batches, short utterances, dead
channels, fp16 overflow, length-dependent saturation, mixed deploy/training forms."""

import copy

import pytest
import torch
import yaml

from espnet_imlspike.attention import SDSA3, HDRepSSA
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.neurons import InputAwareMultiLevelSpikeNeuron, MultiLevelSpikeNeuron
from helpers import run_python

SMALL = dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
             dropout_rate=0.0, positional_dropout_rate=0.0)


def trainer_like_run(model, batches):
    """ESPnet's trainer step: forward, backward, clip; skip the update on a non-finite
    gradient norm (espnet2/train/trainer.py), as it does for a bad batch."""
    torch.manual_seed(2)
    head = torch.nn.Linear(16, 1)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01)
    skipped = 0
    for x, lengths in batches:
        model.train()
        out, _, _ = model(x, lengths)
        head(out).pow(2).mean().backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if torch.isfinite(norm):
            optimizer.step()
        else:
            skipped += 1
        optimizer.zero_grad()
    return skipped


def test_a_non_finite_batch_leaves_the_thresholds_as_if_it_was_never_seen():
    torch.manual_seed(0)
    good = [(torch.randn(3, 40, 12), torch.tensor([40, 31, 22])) for _ in range(4)]
    bad = (torch.full((3, 40, 12), 1e20), torch.tensor([40, 40, 40]))  # overflows inside
    for position in (0, 2):  # the very first batch, and one in the middle
        torch.manual_seed(1)
        with_bad = IMLSpikeformerEncoder(12, **SMALL)
        without = copy.deepcopy(with_bad)
        assert trainer_like_run(with_bad, good[:position] + [bad] + good[position:]) == 1
        assert trainer_like_run(without, good) == 0
        state, reference = with_bad.state_dict(), without.state_dict()
        for key in reference:
            assert torch.equal(state[key], reference[key]), key
        with_bad.eval()
        out, _, _ = with_bad(good[0][0], good[0][1])
        assert torch.isfinite(out).all()


def test_a_channel_that_never_fired_in_training_stays_silent_in_eval():
    neuron = InputAwareMultiLevelSpikeNeuron(3, 4).train()
    neuron(torch.tensor([[[-1.0, 2.0, 0.0], [-0.5, 1.0, -2.0]]]))  # channels 0, 2 never > 0
    neuron.eval()
    out = neuron(torch.tensor([[[5.0, 1.0, 1e-3]]]))
    assert out.view(-1).tolist() == [0.0, 2.0, 0.0]  # training could not fire them either


def test_uncalibrated_statistics_warn_in_eval(caplog):
    neuron = InputAwareMultiLevelSpikeNeuron(3, 4).eval()
    with caplog.at_level("WARNING"):
        neuron(torch.ones(1, 2, 3))
    assert "before any training batch" in caplog.text


def test_sdsa3_with_multi_level_spikes_stays_finite_in_fp16_at_400_frames():
    torch.manual_seed(0)
    attention = SDSA3(64, 4, lambda: MultiLevelSpikeNeuron(6, 0.05))
    spikes = torch.full((2, 400, 64), 6.0)  # dense multi-level counts
    with torch.autocast("cpu", dtype=torch.float16):
        out = attention(spikes, torch.ones(2, 400, dtype=torch.bool))
    assert torch.isfinite(out).all()
    # the unscaled product itself would overflow float16 here
    q = torch.full((1, 1, 400, 16), 6.0, dtype=torch.float16)
    assert not torch.isfinite(q @ (q.transpose(-2, -1) @ q)).all()


@pytest.mark.parametrize("norm, grows", [("none", True), ("valid_keys", False)])
def test_linear_attention_saturation_with_length(norm, grows):
    """Share of attention spikes at T in eval after calibrating at L=25, at L=25 and 400."""
    torch.manual_seed(0)
    make = lambda: InputAwareMultiLevelSpikeNeuron(32, 6)  # noqa: E731
    attention = HDRepSSA(32, 4, make, variant="linear", decay=None, linear_norm=norm)
    captured = []
    attention.attention_neuron.register_forward_hook(lambda m, i, o: captured.append(o))

    def saturation(length):
        captured.clear()
        x = torch.randint(0, 7, (8, length, 32)).float()
        attention(x, torch.ones(8, length, dtype=torch.bool))
        return float((captured[0] == 6).float().mean())

    attention.train()
    for _ in range(20):
        saturation(25)
    attention.eval()
    short, long = saturation(25), saturation(400)
    if grows:
        assert long > short + 0.1
    else:
        assert long <= short + 0.02


# ---------------------------------------------------------------- through ESPnet


@pytest.mark.slow
def test_one_short_utterance_does_not_abort_stock_training(tmp_path):
    """A 0.04 s utterance (5 fbank frames; conv2d needs 7) in the training data."""
    import numpy as np
    import soundfile
    from asr_pipeline import train_and_decode
    from tone_corpus import make_corpus

    from helpers import TONE_CONF

    dirs = make_corpus(tmp_path, {"train": 24, "valid": 4, "test": 4})
    wav = tmp_path / "short.wav"
    soundfile.write(wav, (np.random.default_rng(0).standard_normal(640) * 0.1).astype("float32"),
                    16000)
    train = dirs["train"]
    for name, line in (("wav.scp", f"zz_short {wav}"), ("text", "zz_short ab"),
                       ("utt2spk", "zz_short zz")):
        with open(train / name, "a") as f:
            f.write(line + "\n")
    (train / "spk2utt").write_text((train / "spk2utt").read_text() + "zz zz_short\n")
    result = train_and_decode(tmp_path, TONE_CONF / "train_asr_iml_spikeformer_tiny.yaml",
                              dirs, ["--max_epoch", "1", "--batch_size", "25"], tag="short")
    log = (tmp_path / "logs" / "train_short.log").read_text()
    assert "TooShortUttError" not in log and "1epoch results" in log
    assert result["exp_dir"].joinpath("valid.acc.best.pth").is_file()


@pytest.mark.slow
def test_stock_speech2text_refuses_mixed_training_and_deploy_forms(tiny_iml_asr, tmp_path):
    exp = tiny_iml_asr["exp"]
    done = run_python(["-m", "espnet_imlspike.bin.deploy",
                       "--asr_train_config", str(exp / "config.yaml"),
                       "--asr_model_file", str(exp / "valid.acc.best.pth"),
                       "--output_dir", str(tmp_path / "deploy")])
    assert done.returncode == 0, done.stderr[-2000:]
    pairs = {
        "deploy config, training checkpoint": (tmp_path / "deploy/config.yaml",
                                               exp / "valid.acc.best.pth", "training form"),
        "training config, deploy checkpoint": (exp / "config.yaml",
                                               tmp_path / "deploy/model.pth", "deploy form"),
    }
    for name, (config, model, other) in pairs.items():
        script = ("from espnet2.bin.asr_inference import Speech2Text\n"
                  f"Speech2Text(asr_train_config={str(config)!r}, asr_model_file={str(model)!r})\n")
        done = run_python(["-c", script])
        assert done.returncode != 0, name
        assert f"state dict is of the {other}" in done.stderr, (name, done.stderr[-1500:])
    # the matching pairs load
    for config, model in ((tmp_path / "deploy/config.yaml", tmp_path / "deploy/model.pth"),
                          (exp / "config.yaml", exp / "valid.acc.best.pth")):
        script = ("from espnet2.bin.asr_inference import Speech2Text\n"
                  f"Speech2Text(asr_train_config={str(config)!r}, asr_model_file={str(model)!r})\n")
        assert run_python(["-c", script]).returncode == 0
    assert yaml.safe_load((tmp_path / "deploy/config.yaml").read_text())["encoder"] == (
        "iml_spikeformer_deploy")


def test_energy_measurement_skips_and_lists_too_short_utterances():
    from espnet_imlspike.energy.measure import measure

    encoder = IMLSpikeformerEncoder(12, **SMALL).eval()
    utterances = [("long", torch.randn(40, 12)), ("short", torch.randn(5, 12)),
                  ("also_long", torch.randn(30, 12))]
    recorder, lengths, skipped = measure(encoder, encoder, utterances,
                                         lambda m, x, n: m(x, n), progress=False)
    assert skipped == ["short"]
    assert [frames for frames, _ in lengths] == [40, 30]  # only the measured ones
    assert all(layer.frames > 0 for layer in recorder.layers.values())
