"""ESPnet integration through the unmodified entry points, in fresh interpreters."""

import json
import re
import sysconfig
import zipfile

import pytest
import yaml

from helpers import REPO, TONE_CONF, run_python, shipped_training_configs

AISHELL_IML = REPO / "conf/asr/aishell/train_asr_iml_spikeformer.yaml"
PURELIB = sysconfig.get_paths()["purelib"]  # this environment's site-packages


def test_registration_happens_when_espnet_asr_task_is_imported():
    done = run_python(
        [
            "-c",
            "import espnet2.tasks.asr as t; "
            "from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder as I, "
            "SpikeDrivenTransformerEncoder as S; "
            "c = t.encoder_choices; "
            "assert c.get_class('iml_spikeformer') is I, c.choices(); "
            "assert c.get_class('spike_driven_transformer') is S; print('ok')",
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_startup_imports_neither_torch_nor_espnet():
    done = run_python(
        [
            "-c",
            "import sys; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'espnet', 'espnet2', 'espnet_imlspike')))",
        ]
    )
    assert done.returncode == 0, done.stderr
    loaded = eval(done.stdout.strip())
    assert loaded == ["espnet_imlspike", "espnet_imlspike.autoload"]


def test_registration_catches_up_when_espnet_was_imported_first():
    # -S: no .pth hook at start-up; ESPnet's task is imported first, the hook later.
    done = run_python(
        [
            "-S",
            "-c",
            f"import sys, site; sys.path.append({PURELIB!r}); "
            "import espnet2.tasks.asr as t; "
            "before = 'iml_spikeformer' in t.encoder_choices.classes; "
            "site.main(); "
            "print(before, 'iml_spikeformer' in t.encoder_choices.classes)",
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("False True")


def build_model_from_config(config, token_list, **overrides):
    from espnet2.tasks.asr import ASRTask

    parser = ASRTask.get_parser()
    argv = ["--config", str(config), "--token_list", str(token_list)]
    for key, value in overrides.items():
        argv += [f"--{key}", value]
    args = parser.parse_args(argv)
    return ASRTask.build_model(args)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_aishell_config_builds_the_papers_30_35m_model(aishell_token_list, tmp_path):
    import espnet_imlspike.registration as registration

    registration.register_asr()
    ours = build_model_from_config(AISHELL_IML, aishell_token_list)
    assert type(ours.encoder).__name__ == "IMLSpikeformerEncoder"
    assert ours.encoder.timesteps == 6
    # the stock recipe with ESPnet's own TransformerEncoder, same YAML otherwise
    stock_conf = yaml.safe_load(AISHELL_IML.read_text())
    stock_conf["encoder"] = "transformer"
    for key in list(stock_conf["encoder_conf"]):
        if key not in ("output_size", "attention_heads", "linear_units", "num_blocks",
                       "dropout_rate", "positional_dropout_rate",
                       "attention_dropout_rate", "input_layer", "normalize_before"):
            del stock_conf["encoder_conf"][key]
    stock_path = tmp_path / "stock.yaml"
    stock_path.write_text(yaml.safe_dump(stock_conf))
    stock = build_model_from_config(stock_path, aishell_token_list)
    assert count(stock) == 30_351_890  # ESPnet's aishell Transformer: paper's 30.35M
    assert count(ours) == count(stock)


DRY_RUN_SCRIPT = """
import sys, traceback
from espnet2.bin.asr_train import main
for line in sys.stdin:
    config, tokens, out = line.split()
    print("@@@ begin " + config, file=sys.stderr, flush=True)
    try:
        main(cmd=["--dry_run", "true", "--config", config, "--token_list", tokens,
                  "--ngpu", "0", "--output_dir", out])
        print("@@@ ok", file=sys.stderr, flush=True)
    except BaseException:
        traceback.print_exc()
        print("@@@ failed", file=sys.stderr, flush=True)
"""


def token_list_for(config, tmp_path):
    """A token list of the recipe's size: aishell 4233 chars, librispeech 5000 BPE."""
    size = {"aishell": 4233, "librispeech": 5000}.get(config.parent.name, 12)
    path = tmp_path / f"tokens_{size}.txt"
    if not path.exists():
        tokens = ["<blank>", "<unk>"] + [f"t{i}" for i in range(size - 3)] + ["<sos/eos>"]
        path.write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """The stock ``espnet2.bin.asr_train`` dry run of every shipped ASR config.

    One interpreter calls asr_train's own ``main(cmd)`` once per config (importing ESPnet
    once instead of once per config); returns config -> (log text, output dir).
    """
    import subprocess
    import sys

    tmp_path = tmp_path_factory.mktemp("dry_runs")
    jobs = []
    for index, config in enumerate(shipped_training_configs()):
        jobs.append(f"{config} {token_list_for(config, tmp_path)} {tmp_path / str(index)}")
    done = subprocess.run([sys.executable, "-c", DRY_RUN_SCRIPT], input="\n".join(jobs),
                          capture_output=True, text=True, timeout=1800)
    logs = {}
    for chunk in done.stderr.split("@@@ begin ")[1:]:
        path, _, text = chunk.partition("\n")
        logs[path] = text
    return {
        config: (logs.get(str(config), "never ran\n" + done.stderr[-2000:]),
                 tmp_path / str(index))
        for index, config in enumerate(shipped_training_configs())
    }


def expected_size(config):
    """The parameter count (M) the config is named for, else its corpus's main size."""
    named = re.search(r"_(\d+\.\d+)m\.yaml$", config.name)
    if named:
        return named.group(1)
    return {"aishell": "30.35", "librispeech": "99.36"}.get(config.parent.name)


@pytest.mark.parametrize("config", shipped_training_configs(), ids=lambda p: p.name)
def test_every_shipped_config_passes_stock_dry_run(config, dry_runs):
    log, out = dry_runs[config]
    assert "@@@ ok" in log, log[-3000:]
    assert "Total Number of model parameters" in log
    dumped = yaml.safe_load((out / "config.yaml").read_text())
    assert dumped["encoder"] == yaml.safe_load(config.read_text())["encoder"]
    size = expected_size(config)
    if size is not None:
        assert f"Total Number of model parameters: {size} M" in log


def test_print_config_shows_every_encoder_option():
    done = run_python(
        ["-m", "espnet2.bin.asr_train", "--config", str(AISHELL_IML), "--print_config"]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = yaml.safe_load(done.stdout)
    assert shown["encoder"] == "iml_spikeformer"
    for option in ("timesteps", "firing", "attention", "momentum", "decay_layer_start"):
        assert option in shown["encoder_conf"]


@pytest.mark.slow
def test_stock_train_then_decode_iml_spikeformer(tiny_iml_asr):
    import torch

    from espnet2.fileio.read_text import read_2columns_text as read_kaldi_map

    hyps = read_kaldi_map(tiny_iml_asr["out"] / "decode/tiny/1best_recog/text")
    assert set(hyps) == set(read_kaldi_map(tiny_iml_asr["dirs"]["test"] / "text"))
    state = torch.load(tiny_iml_asr["exp"] / "valid.acc.best.pth", map_location="cpu")
    # the IMLS running thresholds are trained buffers, saved in the checkpoint
    key = "encoder.encoders.0.attn_input_neuron.running_max"
    assert key in state and not torch.equal(state[key], torch.ones_like(state[key]))
    config = yaml.safe_load((tiny_iml_asr["exp"] / "config.yaml").read_text())
    assert config["encoder"] == "iml_spikeformer"


@pytest.mark.slow
def test_stock_train_then_decode_spike_driven_transformer(tmp_path):
    from asr_pipeline import train_and_decode
    from espnet2.fileio.read_text import read_2columns_text as read_kaldi_map
    from tone_corpus import make_corpus

    dirs = make_corpus(tmp_path, {"train": 24, "valid": 6, "test": 5})
    config = TONE_CONF / "train_asr_spike_driven_transformer_tiny.yaml"
    train_and_decode(tmp_path, config, dirs, ["--max_epoch", "1"], tag="sdt")
    hyps = read_kaldi_map(tmp_path / "decode/sdt/1best_recog/text")
    assert set(hyps) == set(read_kaldi_map(dirs["test"] / "text"))
    dumped = yaml.safe_load((tmp_path / "exp/sdt/config.yaml").read_text())
    assert dumped["encoder"] == "spike_driven_transformer"


@pytest.mark.slow
def test_wheel_ships_the_hook_at_site_packages_root(tmp_path):
    done = run_python(
        ["-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO)],
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("espnet_imlspike-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "espnet_imlspike.pth" in names
    # install_requires are ranges that this (ESPnet 202511) environment already satisfies:
    # installing the wheel would change nothing else (torch, numpy, espnet stay)
    done = run_python(["-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                       "--no-index", str(wheel)])
    assert done.returncode == 0, done.stderr[-2000:]
    would_install = [item["metadata"]["name"] for item in json.loads(done.stdout)["install"]]
    assert would_install == ["espnet-imlspike"]
    target = tmp_path / "site"
    done = run_python(["-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)])
    assert done.returncode == 0, done.stderr[-2000:]
    # -S keeps the dev install's .pth files out; addsitedir processes the wheel's.
    done = run_python(
        ["-S", "-c",
         f"import site, sys; sys.path.append({PURELIB!r}); "
         f"site.addsitedir({str(target)!r}); "
         "import espnet_imlspike; assert espnet_imlspike.__file__.startswith("
         f"{str(target)!r}), espnet_imlspike.__file__; "
         "import espnet2.tasks.asr as t; print('iml_spikeformer' in t.encoder_choices.classes)"],
        cwd=tmp_path,  # not the repository, whose package would shadow the wheel's
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("True")


@pytest.mark.slow
def test_offline_demo_recipe_reduced(tmp_path):
    """The README's main job at its CI size: espeak-ng speech, both models, energy."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        ["bash", str(REPO / "egs2/espeak_digits/asr1/run.sh"), "--size", "ci",
         "--out_dir", str(tmp_path)],
        env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = (tmp_path / "results.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {"iml_spikeformer_demo", "transformer_demo"}
    # the spiking row carries its energy report, the ANN row the ANN energy of that size
    assert "x1.00" in rows["transformer_demo"]
    report = json.loads((tmp_path / "energy/iml_spikeformer_demo/energy.json").read_text())
    assert report["utterances"] == 16
    assert "[3/4] model 2/2: transformer_demo" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("last_map", ["auto", "0"])  # the tiny config's: recomputed; kept
def test_stock_train_then_decode_with_the_fast_paths_forced_on_the_cpu(tmp_path, monkeypatch,
                                                                       last_map):
    """What a GPU user runs by default (fused IMLS firing, the chunked input layer), forced
    onto the CPU with IMLSPIKE_FAST=1, through the stock asr_train and asr_inference; the
    chunked layer's backward both ways (AISHELL's recomputing the last map, LibriSpeech's
    keeping it)."""
    import torch

    from asr_pipeline import train_and_decode
    from espnet2.fileio.read_text import read_2columns_text as read_kaldi_map
    from tone_corpus import make_corpus

    monkeypatch.setenv("IMLSPIKE_FAST", "1")
    monkeypatch.setenv("IMLSPIKE_RECOMPUTE_LAST_MAP", last_map)
    dirs = make_corpus(tmp_path, {"train": 24, "valid": 6, "test": 5})
    config = TONE_CONF / "train_asr_iml_spikeformer_tiny.yaml"
    train_and_decode(tmp_path, config, dirs, ["--max_epoch", "1"], tag="fast")
    log = (tmp_path / "logs/train_fast.log").read_text()
    assert "input layer Conv2dSubsampling in time chunks" in log
    assert f"(the last map {'too' if last_map == 'auto' else 'kept'};" in log
    hyps = read_kaldi_map(tmp_path / "decode/fast/1best_recog/text")
    assert set(hyps) == set(read_kaldi_map(dirs["test"] / "text"))
    state = torch.load(tmp_path / "exp/fast/valid.acc.best.pth", map_location="cpu")
    conv = state["encoder.embed.conv.0.weight"]  # trained through the chunked backward
    assert conv.isfinite().all() and state["encoder.embed.out.0.weight"].isfinite().all()
    key = "encoder.encoders.0.attn_input_neuron.running_max"
    assert not torch.equal(state[key], torch.ones_like(state[key]))
