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


def shipped_training_configs():
    """Every training config the package ships (recipes' conf/ and conf/tuning/)."""
    return sorted(REPO.glob("egs2/*/*/conf/**/train_*.yaml"))


@pytest.fixture
def aishell_token_list(tmp_path):
    """A token list of aishell's size (4233 entries, as in ESPnet's aishell recipe)."""
    path = tmp_path / "tokens_4233.txt"
    tokens = ["<blank>", "<unk>"] + [f"c{i}" for i in range(4230)] + ["<sos/eos>"]
    path.write_text("\n".join(tokens) + "\n")
    return path
