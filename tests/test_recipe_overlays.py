"""The recipe overlays (egs2/<corpus>/<task>/run.sh) against a stub ESPnet checkout.

The stub's asr.sh / spk.sh record their arguments and lay out what ESPnet's stages
leave (exp/<task>_<tag>/config.yaml and the model, the test data dir) from a model we
trained with the stock entry points; the overlay's energy stage then runs for real.
"""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

STUB = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$(dirname "$0")/args.txt"
while [ $# -gt 0 ]; do
  case "$1" in --asr_tag|--spk_tag) tag=$2 ;; esac
  shift
done
mkdir -p "exp/asr_$tag" dump/raw
cp "$STUB_EXP/config.yaml" "exp/asr_$tag/config.yaml"
cp "$STUB_EXP/valid.acc.best.pth" "exp/asr_$tag/valid.acc.ave.pth"
rm -rf dump/raw/test && cp -r "$STUB_TEST" dump/raw/test
"""


def run_overlay(script, env, *args):
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_overlays_need_an_espnet_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ESPNET_ROOT"}
    for script in ("aishell/asr1/run.sh", "librispeech/asr1/run.sh", "voxceleb/spk1/run.sh"):
        done = run_overlay(REPO / "egs2" / script, env)
        assert done.returncode != 0 and "set ESPNET_ROOT" in done.stderr, script
        done = run_overlay(REPO / "egs2" / script, dict(env, ESPNET_ROOT=str(tmp_path)))
        assert done.returncode != 0 and "is not an ESPnet checkout" in done.stderr
    done = run_overlay(REPO / "egs2/aishell/asr1/run.sh", dict(env, ESPNET_ROOT=str(tmp_path)),
                       "--asr_config", str(tmp_path / "missing.yaml"))
    assert done.returncode != 0 and "missing.yaml: no such file" in done.stderr


@pytest.mark.slow
def test_aishell_overlay_runs_stock_asr_sh_then_the_energy_stage(tiny_iml_asr, tmp_path):
    recipe = tmp_path / "espnet/egs2/aishell/asr1"
    recipe.mkdir(parents=True)
    (recipe / "asr.sh").write_text(STUB)
    (recipe / "asr.sh").chmod(0o755)
    env = dict(os.environ, ESPNET_ROOT=str(tmp_path / "espnet"), python=sys.executable,
               STUB_EXP=str(tiny_iml_asr["exp"]), STUB_TEST=str(tiny_iml_asr["dirs"]["test"]))
    done = run_overlay(REPO / "egs2/aishell/asr1/run.sh", env, "--stage", "11",
                       "--audio_format", "wav")  # the stub data dir holds wav files
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    args = (recipe / "args.txt").read_text().split("\n")
    config = str(REPO / "egs2/aishell/asr1/conf/tuning/train_asr_iml_spikeformer.yaml")
    assert args[args.index("--asr_config") + 1] == config
    assert args[args.index("--use_lm") + 1] == "false"
    assert args[args.index("--asr_tag") + 1] == "train_asr_iml_spikeformer"
    assert "--stage" in args and args[args.index("--stage") + 1] == "11"  # passed on
    assert args[args.index("--audio_format") + 1] == "wav"
    energy = recipe / "exp/asr_train_asr_iml_spikeformer/energy"
    assert (energy / "energy.json").is_file() and (energy / "firing_rates.png").is_file()
    # an ANN config: the stage notes it and skips
    shutil.rmtree(recipe / "exp")
    env["STUB_EXP"] = str(tmp_path / "ann")
    shutil.copytree(tiny_iml_asr["exp"], tmp_path / "ann",
                    ignore=shutil.ignore_patterns("*.png", "images"))
    conf = (tmp_path / "ann/config.yaml").read_text().replace(
        "encoder: iml_spikeformer", "encoder: transformer")
    (tmp_path / "ann/config.yaml").write_text(conf)
    done = run_overlay(REPO / "egs2/aishell/asr1/run.sh", env, "--asr_config",
                       str(REPO / "egs2/aishell/asr1/conf/tuning/train_asr_transformer_30.35m.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped, encoder 'transformer' has no spiking neurons" in done.stdout
