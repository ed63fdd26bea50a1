"""The recipe overlays on a REAL ESPnet 202511 checkout: the stock asr.sh / spk.sh stages.

Runs only when ``IMLSPIKE_ESPNET_CHECKOUT`` names an ESPnet checkout (its ``egs2/TEMPLATE``,
``egs2/aishell/asr1``, ``egs2/voxceleb/spk1``, the top-level ``utils/`` the recipe scripts
link to, and ``tools/`` with SCTK built, ``tools/sctk/bin/sclite``), and ``sox`` is installed
(speed perturbation); it is skipped otherwise (CI has no ESPnet checkout). Nothing is written
into the checkout: each test builds an ESPNET_ROOT in a temporary dir whose recipe dirs link to
the checkout's files, with ``tools/activate_python.sh`` putting a wrapper of the interpreter
running these tests first on PATH, while the overlay starts with a PATH whose ``python3``
cannot import our package. ESPnet's aishell ``local/path.sh`` stops unless
``tools/kenlm/build/bin`` exists; without kenlm the temporary root gets that empty dir (no LM is
used), as docs/recipes.md describes.

    IMLSPIKE_ESPNET_CHECKOUT=~/espnet .venv/bin/python -m pytest tests/test_recipe_real_checkout_espnet.py
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO, TONE_CONF, TONE_SPK_CONF

CHECKOUT = os.environ.get("IMLSPIKE_ESPNET_CHECKOUT")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHECKOUT, reason="set IMLSPIKE_ESPNET_CHECKOUT to an ESPnet checkout"),
]


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def espnet_root(tmp: Path, recipe: str) -> dict:
    """A temporary ESPNET_ROOT linking to the checkout, with one writable recipe dir."""
    checkout = Path(CHECKOUT).expanduser().resolve()
    for needed in ("egs2/TEMPLATE/asr1/asr.sh", "egs2/TEMPLATE/spk1/spk.sh", f"egs2/{recipe}",
                   "utils", "tools/extra_path.sh", "tools/sctk/bin/sclite"):
        assert (checkout / needed).exists(), f"{checkout}/{needed} is missing"
    assert shutil.which("sox"), "sox is needed for speed perturbation (apt-get install sox)"
    root = tmp / "espnet"
    (root / "egs2").mkdir(parents=True)
    (root / "egs2/TEMPLATE").symlink_to(checkout / "egs2/TEMPLATE")
    (root / "utils").symlink_to(checkout / "utils")
    (root / "tools").mkdir()
    for entry in (checkout / "tools").iterdir():
        if entry.name != "activate_python.sh":
            (root / "tools" / entry.name).symlink_to(entry)
    if not (root / "tools/kenlm/build/bin").exists():
        (root / "tools/kenlm").unlink(missing_ok=True)
        (root / "tools/kenlm/build/bin").mkdir(parents=True)  # aishell's local/path.sh check
    rdir = root / "egs2" / recipe
    rdir.mkdir(parents=True)
    for entry in (checkout / "egs2" / recipe).iterdir():
        if entry.name not in ("data", "dump", "exp", "run.sh"):
            (rdir / entry.name).symlink_to(entry)
    recipe_bin, caller_bin = tmp / "recipe_bin", tmp / "caller_bin"
    recipe_log, caller_log = tmp / "recipe_python.log", tmp / "caller_python.log"
    pythonpath = os.environ.get("PYTHONPATH", "")
    for name in ("python3", "python"):
        write(recipe_bin / name,
              f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> "{recipe_log}"\n'
              + (f'export PYTHONPATH="{pythonpath}"\n' if pythonpath else "")
              + f'exec "{sys.executable}" "$@"\n', 0o755)
        write(caller_bin / name,
              f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> "{caller_log}"\n'
              'echo "$0: No module named espnet_imlspike (the caller\'s Python)" >&2\nexit 1\n',
              0o755)
    write(root / "tools/activate_python.sh", f'export PATH="{recipe_bin}:$PATH"\n')
    env = {"PATH": f"{caller_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp),
           "ESPNET_ROOT": str(root), "LC_ALL": "C.UTF-8"}
    return {"recipe": rdir, "env": env, "caller_log": caller_log, "recipe_log": recipe_log}


def copy_data_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("wav.scp", "text", "utt2spk", "spk2utt"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def run(script: Path, env: dict, *args):
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True,
                          text=True, timeout=1800)


def load_packed(code: str, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    shutil.rmtree(lines.pop("cache"), ignore_errors=True)  # the model zoo's unpacked copy
    return lines


def test_aishell_overlay_runs_asr_sh_stages_2_to_14(tiny_iml_asr, tmp_path):
    setup = espnet_root(tmp_path, "aishell/asr1")
    recipe = setup["recipe"]
    for name, split in (("train", "train"), ("dev", "valid"), ("test", "test")):
        copy_data_dir(tiny_iml_asr["dirs"][split], recipe / "data" / name)
    done = run(REPO / "egs2/aishell/asr1/run.sh", setup["env"],
               "--stage", "2", "--ngpu", "0", "--nj", "1", "--inference_nj", "1",
               "--gpu_inference", "false",
               "--asr_config", str(TONE_CONF / "train_asr_iml_spikeformer_tiny.yaml"),
               "--asr_args", "--max_epoch 1", "--inference_args", "--beam_size 4",
               "--skip_packing", "false")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert not setup["caller_log"].exists(), setup["caller_log"].read_text()
    for stage in (2, 3, 4, 5, 10, 11, 12, 13, 14):
        assert f"Stage {stage}:" in done.stdout, stage
    exp = recipe / "exp/asr_train_asr_iml_spikeformer_tiny"
    results = (exp / "RESULTS.md").read_text()
    assert "### CER" in results and "## Energy report" in results  # sclite, then ours
    assert "### Spike statistics" in results
    packed = exp / "asr_train_asr_iml_spikeformer_tiny_valid.acc.ave.zip"
    with zipfile.ZipFile(packed) as z:
        assert "## Energy report" in z.read(f"{exp.relative_to(recipe)}/RESULTS.md").decode()
        assert f"{exp.relative_to(recipe)}/images/energy_firing_rates.png" in z.namelist()
    wav = (recipe / "data/test/wav.scp").read_text().split("\n")[0].split()[1]
    lines = load_packed(f"""
import soundfile
from espnet2.bin.asr_inference import Speech2Text
model = Speech2Text.from_pretrained({str(packed)!r}, beam_size=4)
print("encoder", type(model.asr_model.encoder).__name__)
print("text", repr(model(soundfile.read({wav!r})[0])[0][0]))
from espnet_model_zoo.downloader import ModelDownloader, str_to_hash
print("cache", ModelDownloader().cachedir / str_to_hash({str(packed)!r}))
""", tmp_path)
    assert lines["encoder"] == "IMLSpikeformerEncoder"


def test_voxceleb_overlay_runs_spk_sh_stages_2_to_9(tiny_iml_asr, tmp_path):
    setup = espnet_root(tmp_path, "voxceleb/spk1")
    recipe = setup["recipe"]
    copy_data_dir(tiny_iml_asr["dirs"]["train"], recipe / "data/tone_train")
    test = copy_data_dir(tiny_iml_asr["dirs"]["valid"], recipe / "data/tone_test")
    wavs = dict(l.split(maxsplit=1) for l in (test / "wav.scp").read_text().splitlines())
    spk = dict(l.split(maxsplit=1) for l in (test / "utt2spk").read_text().splitlines())
    keys = sorted(wavs)
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]]
    (test / "trial.scp").write_text("".join(f"{a}*{b} {wavs[a]}\n" for a, b in pairs))
    (test / "trial2.scp").write_text("".join(f"{a}*{b} {wavs[b]}\n" for a, b in pairs))
    (test / "trial_label").write_text(
        "".join(f"{a}*{b} {int(spk[a] == spk[b])}\n" for a, b in pairs))
    for name in ("musan_music", "musan_noise", "musan_speech", "rirs"):
        (recipe / "data" / f"{name}.scp").write_text("")  # spk.sh stage 3 copies them
    # spk.sh gives --spk_args to spk_embed_extract too (stage 6), which rejects training
    # options: the epoch count goes into a copy of the config
    config = tmp_path / "train_spk_iml_spikeformer_tiny.yaml"
    config.write_text("\n".join(
        "max_epoch: 1" if line.startswith("max_epoch:") else line
        for line in (TONE_SPK_CONF / "train_spk_iml_spikeformer_tiny.yaml").read_text().split("\n")))
    done = run(REPO / "egs2/voxceleb/spk1/run.sh", setup["env"],
               "--stage", "2", "--ngpu", "0", "--nj", "1",
               "--train_set", "tone_train", "--valid_set", "tone_test", "--test_sets", "tone_test",
               "--spk_config", str(config),
               "--inference_config", str(TONE_SPK_CONF / "decode.yaml"),
               "--skip_packing", "false")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert not setup["caller_log"].exists(), setup["caller_log"].read_text()
    exp = recipe / "exp/spk_train_spk_iml_spikeformer_tiny_sp"
    results = (exp / "RESULTS.md").read_text()
    assert "| Model name | EER(%) | minDCF |" in results and "## Energy report" in results
    packed = exp / "spk_train_spk_iml_spikeformer_tiny_sp_valid.eer.best.zip"
    with zipfile.ZipFile(packed) as z:
        assert "## Energy report" in z.read(f"{exp.relative_to(recipe)}/RESULTS.md").decode()
    lines = load_packed(f"""
import soundfile
from espnet2.bin.spk_inference import Speech2Embedding
model = Speech2Embedding.from_pretrained({str(packed)!r})
print("encoder", type(model.spk_model.encoder).__name__)
print("shape", tuple(model(soundfile.read({wavs[keys[0]]!r}, dtype="float32")[0]).shape))
from espnet_model_zoo.downloader import ModelDownloader, str_to_hash
print("cache", ModelDownloader().cachedir / str_to_hash({str(packed)!r}))
""", tmp_path)
    assert lines["encoder"] == "IMLSpikeformerSpeakerEncoder" and lines["shape"] == "(1, 32)"
