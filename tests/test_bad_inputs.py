"""Bad input, table-driven: each row is a real call and the clear error (or the correct
result) it must give. Encoder/option rows are fast; CLI rows use a tiny trained model.

CLI rows call each program's own ``main()`` in this process: a user error must end in
``prog: error: ...`` with exit code 2, never a traceback.
"""

import shutil
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
import yaml

from espnet_imlspike.deploy.convert import IMLSpikeformerDeployEncoder
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.encoders.spk import IMLSpikeformerSpeakerEncoder
from espnet_imlspike.errors import ImlSpikeError

SMALL = dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=2)


@dataclass
class Row:
    id: str
    call: Callable
    error: Optional[str]  # a fragment of the message; None: the call must succeed


def encoder(**options):
    return IMLSpikeformerEncoder(12, **dict(SMALL, **options))


def eval_forward(x, ilens):
    return encoder().eval()(x, ilens)


ENCODER_ROWS = [
    Row("sdsa_scale 0", lambda: encoder(attention="sdsa3", sdsa_scale=0.0), "sdsa_scale must be > 0"),
    Row("surrogate_alpha < 0", lambda: encoder(firing="multistep", surrogate_alpha=-1.0),
        "surrogate_alpha must be >= 0"),
    Row("linear_units 0", lambda: encoder(linear_units=0), "linear_units must be >= 1"),
    Row("dropout 1", lambda: encoder(dropout_rate=1.0), "dropout_rate must be in [0, 1)"),
    Row("unknown linear norm", lambda: encoder(linear_attention_norm="rms"),
        "linear_attention_norm must be one of"),
    Row("interctc index past the last block", lambda: encoder(interctc_layer_idx=[2]),
        "interctc_layer_idx must name blocks 1..1"),
    Row("unknown input layer", lambda: encoder(input_layer="conv3d"), "input_layer must be one of"),
    Row("heads not dividing", lambda: encoder(attention_heads=3), "attention_heads=3 must divide"),
    Row("linear input layer for SPK",
        lambda: IMLSpikeformerSpeakerEncoder(12, **SMALL, input_layer="linear"),
        "input_layer must be one of ('conv2d2'"),
    Row("deploy form with multistep firing",
        lambda: IMLSpikeformerDeployEncoder(12, **SMALL, firing="multistep"),
        "firing must be imls or mls"),
    Row("deploy form with an unknown key",
        lambda: IMLSpikeformerDeployEncoder(12, **SMALL, mfa=True), "unknown encoder_conf keys"),
    Row("deploy form put in training mode",
        lambda: IMLSpikeformerDeployEncoder(12, **SMALL).train(), "cannot be trained"),
    Row("ilens longer than the frames", lambda: eval_forward(torch.randn(2, 20, 12),
                                                            torch.tensor([20, 21])),
        "longer than the 20 input frames"),
    Row("float ilens", lambda: eval_forward(torch.randn(1, 20, 12), torch.tensor([20.0])),
        "integer frame counts"),
    Row("NaN features in eval", lambda: eval_forward(torch.full((1, 20, 12), float("nan")),
                                                     torch.tensor([20])), "NaN or Inf"),
    Row("wrong feature dimension", lambda: eval_forward(torch.randn(1, 20, 13),
                                                        torch.tensor([20])),
        "(batch, frames, 12)"),
    Row("valid input", lambda: eval_forward(torch.randn(2, 20, 12), torch.tensor([20, 9])), None),
]


@pytest.mark.parametrize("row", ENCODER_ROWS, ids=lambda r: r.id)
def test_encoder_and_option_rows(row):
    if row.error is None:
        row.call()
        return
    with pytest.raises(ImlSpikeError) as info:
        row.call()
    assert row.error in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still do


# ---------------------------------------------------------------- command-line programs


def cli(module):
    import importlib

    return importlib.import_module(f"espnet_imlspike.bin.{module}").main


def copy_model(exp, dest, config_edit=None, state_edit=None, with_config=True):
    """A copy of the tiny model (config and checkpoint), optionally edited."""
    dest.mkdir(parents=True)
    config = yaml.safe_load((exp / "config.yaml").read_text())
    if config_edit:
        config_edit(config)
    state = torch.load(exp / "valid.acc.best.pth", map_location="cpu")
    if state_edit:
        state_edit(state)
    torch.save(state, dest / "model.pth")
    path = dest / ("config.yaml" if with_config else "given.yaml")
    path.write_text(yaml.safe_dump(config))
    return path, dest / "model.pth"


def uncalibrate(state):
    for key in state:
        if key.endswith("num_batches_tracked"):
            state[key].zero_()
        if key.endswith("running_max"):
            state[key].fill_(1.0)


def set_conf(key, value):
    return lambda config: config["encoder_conf"].__setitem__(key, value)


def cli_rows(exp, test_dir, tmp):
    """(id, program, arguments, expected error fragment or None)."""
    cfg, ckpt = exp / "config.yaml", exp / "valid.acc.best.pth"

    def asr(config, model):
        return ["--asr_train_config", str(config), "--asr_model_file", str(model)]

    corrupt = tmp / "corrupt.yaml"
    corrupt.write_text("encoder: [unclosed\n")
    not_ckpt = tmp / "notes.pth"
    not_ckpt.write_text("these are my notes, not a checkpoint\n")
    shutil.copy(cfg, tmp / "config.yaml")  # beside not_ckpt: the same config
    wider_cfg, bare_ckpt = copy_model(exp, tmp / "bare", set_conf("linear_units", 40),
                                      with_config=False)
    t6_cfg = tmp / "t6.yaml"
    t6 = yaml.safe_load(cfg.read_text())
    t6["encoder_conf"]["timesteps"] = 6
    t6_cfg.write_text(yaml.safe_dump(t6))
    raw_cfg, raw_ckpt = copy_model(exp, tmp / "raw", state_edit=uncalibrate)
    a_file = tmp / "a_file"
    a_file.write_text("x")
    missing_wav = tmp / "missing_wav"
    missing_wav.mkdir()
    (missing_wav / "wav.scp").write_text(f"u1 {tmp}/nowhere.wav\n")
    data = ["--data_dir", str(test_dir)]
    return [
        ("deploy: corrupt YAML", "deploy", asr(corrupt, ckpt) + ["--output_dir", str(tmp / "o1")],
         "is not valid YAML"),
        ("deploy: not a checkpoint", "deploy",
         asr(tmp / "config.yaml", not_ckpt) + ["--output_dir", str(tmp / "o2")],
         "is not a PyTorch checkpoint"),
        ("deploy: shapes differ", "deploy",
         asr(wider_cfg, bare_ckpt) + ["--output_dir", str(tmp / "o3")], "wrong shape"),
        ("deploy: timesteps differ from the checkpoint's own config", "deploy",
         asr(t6_cfg, ckpt) + ["--output_dir", str(tmp / "o4")],
         "encoder_conf differs in ['timesteps']"),
        ("deploy: into the training exp dir", "deploy", asr(cfg, ckpt) + ["--output_dir", str(exp)],
         "not a deploy form"),
        ("deploy: output dir under a file", "deploy",
         asr(cfg, ckpt) + ["--output_dir", str(a_file / "out")], "cannot be created"),
        ("deploy: uncalibrated thresholds", "deploy",
         asr(raw_cfg, raw_ckpt) + ["--output_dir", str(tmp / "o5")], "uncalibrated"),
        ("deploy: uncalibrated, allowed", "deploy",
         asr(raw_cfg, raw_ckpt) + ["--output_dir", str(tmp / "o6"),
                                   "--allow_uncalibrated", "true"], None),
        ("energy: max_utterances 0", "energy_report",
         asr(cfg, ckpt) + data + ["--output_dir", str(tmp / "e1"), "--max_utterances", "0"],
         "must be >= 1"),
        ("energy: max_utterances -1", "energy_report",
         asr(cfg, ckpt) + data + ["--output_dir", str(tmp / "e2"), "--max_utterances", "-1"],
         "must be >= 1"),
        ("energy: wav.scp names a missing file", "energy_report",
         asr(cfg, ckpt) + ["--data_dir", str(missing_wav), "--output_dir", str(tmp / "e3")],
         "utterance u1 names"),
        ("energy: uncalibrated thresholds", "energy_report",
         asr(raw_cfg, raw_ckpt) + data + ["--output_dir", str(tmp / "e4")], "uncalibrated"),
        ("spk_id: an ASR model", "spk_id_accuracy",
         ["--spk_train_config", str(cfg), "--spk_model_file", str(ckpt), "--data_dir",
          str(test_dir), "--output_dir", str(tmp / "s1")], "not a speaker model's config"),
        ("spk_id: batch size 0", "spk_id_accuracy",
         ["--spk_train_config", str(cfg), "--spk_model_file", str(ckpt), "--data_dir",
          str(test_dir), "--output_dir", str(tmp / "s2"), "--batch_size", "0"], "must be >= 1"),
    ]


@pytest.mark.slow
def test_cli_rows(tiny_iml_asr, tmp_path, capsys):
    exp, test_dir = tiny_iml_asr["exp"], tiny_iml_asr["dirs"]["test"]
    failures = []
    for name, program, arguments, error in cli_rows(exp, test_dir, tmp_path):
        try:
            cli(program)(arguments)
            code = 0
        except SystemExit as stop:
            code = stop.code
        err = capsys.readouterr().err
        if error is None:
            ok = code in (0, None)
        else:
            ok = code == 2 and error in err and "Traceback" not in err
        if not ok:
            failures.append(f"{name}: exit {code}, stderr tail {err[-400:]!r}")
    assert not failures, "\n".join(failures)
    # nothing was written into the training exp dir
    assert yaml.safe_load((exp / "config.yaml").read_text())["encoder"] == "iml_spikeformer"


@pytest.mark.slow
def test_report_reruns_need_overwrite_and_leave_no_stale_files(tiny_iml_asr, tmp_path, capsys):
    exp, test_dir = tiny_iml_asr["exp"], tiny_iml_asr["dirs"]["test"]
    main = cli("energy_report")
    args = ["--asr_train_config", str(exp / "config.yaml"),
            "--asr_model_file", str(exp / "valid.acc.best.pth"), "--data_dir", str(test_dir),
            "--output_dir", str(tmp_path / "energy"), "--max_utterances", "2"]
    main(args)
    assert (tmp_path / "energy/firing_rates.png").is_file()
    with pytest.raises(SystemExit) as stop:
        main(args + ["--plots", "false"])
    assert stop.value.code == 2 and "already holds" in capsys.readouterr().err
    main(args + ["--plots", "false", "--overwrite", "true"])
    assert not (tmp_path / "energy/firing_rates.png").exists()  # the first run's plot is gone
    assert (tmp_path / "energy/energy.json").is_file()


def ann_pair(tmp_path):
    """A stock ESPnet Transformer ASR model (random weights) saved as asr_train saves it,
    and an MLS spiking config with the same sizes and parameter names."""
    from espnet2.tasks.asr import ASRTask

    from helpers import TONE_CONF

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(["<blank>", "<unk>", "a", "b", "<sos/eos>"]) + "\n")
    ann = yaml.safe_load((TONE_CONF / "train_asr_transformer_tiny.yaml").read_text())
    ann.update(token_list=str(tokens), normalize=None, frontend_conf={"n_fft": 512})
    exp = tmp_path / "ann_exp"
    exp.mkdir()
    (tmp_path / "given.yaml").write_text(yaml.safe_dump(ann))
    args = ASRTask.get_parser().parse_args(["--config", str(tmp_path / "given.yaml")])
    model = ASRTask.build_model(args)  # completes args (input_size, token_list) as asr_train
    full = yaml.safe_load(yaml.safe_dump(
        {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in vars(args).items()}))
    (exp / "config.yaml").write_text(yaml.safe_dump(full))
    torch.save(model.state_dict(), exp / "valid.acc.best.pth")
    mls = dict(full, encoder="iml_spikeformer",
               encoder_conf=dict(full["encoder_conf"], firing="mls", timesteps=4))
    (tmp_path / "mls.yaml").write_text(yaml.safe_dump(mls))
    return exp, tmp_path / "mls.yaml"


def test_a_transformer_checkpoint_is_refused_for_a_spiking_config(tmp_path, capsys):
    from espnet_imlspike.errors import ModelLoadError
    from espnet_imlspike.model_loading import load_trained_model

    exp, mls_config = ann_pair(tmp_path)
    with pytest.raises(ModelLoadError, match="encoder 'transformer' vs 'iml_spikeformer'"):
        load_trained_model(mls_config, exp / "valid.acc.best.pth", encoders=None)
    # without the checkpoint's own config nothing can tell: it loads, with a note
    (exp / "config.yaml").rename(exp / "elsewhere.yaml")
    model, _ = load_trained_model(mls_config, exp / "valid.acc.best.pth", encoders=None)
    assert type(model.encoder).__name__ == "IMLSpikeformerEncoder"


def test_energy_report_refuses_a_model_without_spiking_neurons(tmp_path, capsys):
    from tone_corpus import make_corpus

    exp, _ = ann_pair(tmp_path)
    dirs = make_corpus(tmp_path / "corpus", {"test": 2})
    with pytest.raises(SystemExit) as stop:
        cli("energy_report")(["--asr_train_config", str(exp / "config.yaml"),
                              "--asr_model_file", str(exp / "valid.acc.best.pth"),
                              "--data_dir", str(dirs["test"]),
                              "--output_dir", str(tmp_path / "energy")])
    assert stop.value.code == 2
    assert "encoder 'transformer' has no spiking neurons" in capsys.readouterr().err
    assert not (tmp_path / "energy").exists()  # checked before, created only to write
