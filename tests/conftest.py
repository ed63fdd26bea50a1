"""Fixtures shared by the tests (helpers live in tests/helpers.py)."""

import pytest

from helpers import TONE_CONF


@pytest.fixture
def aishell_token_list(tmp_path):
    """A token list of aishell's size (4233 entries, as in ESPnet's aishell recipe)."""
    path = tmp_path / "tokens_4233.txt"
    tokens = ["<blank>", "<unk>"] + [f"c{i}" for i in range(4230)] + ["<sos/eos>"]
    path.write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_iml_asr(tmp_path_factory):
    """A tiny iml_spikeformer trained for 2 epochs and decoded via the stock entry points.

    Returns a dict with the run directory, data dirs and the test CER.
    """
    from asr_pipeline import train_and_decode
    from tone_corpus import make_corpus

    out = tmp_path_factory.mktemp("tiny_iml_asr")
    dirs = make_corpus(out, {"train": 40, "valid": 8, "test": 6})
    result = train_and_decode(
        out, TONE_CONF / "train_asr_iml_spikeformer_tiny.yaml", dirs,
        ["--max_epoch", "2"], tag="tiny",
    )
    return {"out": out, "dirs": dirs, "cer": result["cer"], "exp": result["exp_dir"]}
