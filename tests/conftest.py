"""Shared helpers: paths of the repository and a runner for ESPnet entry points."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_python(args, cwd=None, timeout=600):
    """Run ``python <args>`` in a fresh interpreter; return the CompletedProcess."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def shipped_training_configs(task: str = "asr"):
    """Every training config the package ships for a task (asr, spk) under conf/."""
    return sorted(REPO.glob(f"conf/{task}/**/train_*.yaml"))


@pytest.fixture
def aishell_token_list(tmp_path):
    """A token list of aishell's size (4233 entries, as in ESPnet's aishell recipe)."""
    path = tmp_path / "tokens_4233.txt"
    tokens = ["<blank>", "<unk>"] + [f"c{i}" for i in range(4230)] + ["<sos/eos>"]
    path.write_text("\n".join(tokens) + "\n")
    return path


TONE_CONF = REPO / "conf/asr/tone_demo"


@pytest.fixture(scope="session")
def tiny_iml_asr(tmp_path_factory):
    """A tiny iml_spikeformer trained for 2 epochs and decoded via the stock entry points.

    Returns a dict with the run directory, data dirs and the test CER.
    """
    from espnet_imlspike.demo.asr_pipeline import train_and_decode
    from espnet_imlspike.demo.tone_corpus import make_corpus

    out = tmp_path_factory.mktemp("tiny_iml_asr")
    dirs = make_corpus(out, {"train": 40, "valid": 8, "test": 6})
    result = train_and_decode(
        out, TONE_CONF / "train_asr_iml_spikeformer_tiny.yaml", dirs,
        ["--max_epoch", "2"], tag="tiny",
    )
    return {"out": out, "dirs": dirs, "cer": result["cer"], "exp": result["exp_dir"]}
