"""The recipe overlays (egs2/<corpus>/<task>/run.sh) against a checkout laid out as ESPnet's.

The fake $ESPNET_ROOT is modelled on a real ESPnet 202511 checkout where it matters to the
overlays: ``utils/`` and ``steps/`` live in ``egs2/TEMPLATE/asr1`` and every recipe dir
symlinks to them (and to ``asr.sh`` / ``spk.sh`` / ``path.sh``); ``path.sh`` sources
``tools/activate_python.sh``, which puts the recipe's Python first on PATH. That Python is a
wrapper (``python3``, ``python``, ``mypython``) in its own bin dir that logs each call and
runs the interpreter of these tests; the overlay itself is started with a PATH whose
``python3``/``python`` cannot import anything of ours (they log the call and fail as a Python
without the package does). ``asr.sh`` / ``spk.sh`` are stand-ins for the real scripts (not
shipped here; ``tests/test_recipe_real_checkout_espnet.py`` runs the real ones when a checkout
is available) that behave as the real ones do in every way the overlays depend on: their own
defaults (``python=python3``, ...), options read by a ``utils/parse_options.sh`` with Kaldi's
rules (``--name value``, ``-``/``_`` alike, unknown names rejected, the last one wins),
``. ./path.sh`` after parsing, ``${python}`` for every Python step, the stage numbers and
skip rules, the exp dir names, ``RESULTS.md`` rewritten by the scoring stage, and the packing
stage calling the stock ``espnet2.bin.pack`` with asr.sh's / spk.sh's arguments. Training and
decoding are replaced by copying a model trained through the stock entry points.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO, TONE_SPK_CONF as SPK_CONF


PARSE_OPTIONS = r"""# Fake checkout: "--name value" options into the caller's variables, by Kaldi's rules for
# utils/parse_options.sh ("-" and "_" alike in names, unknown names rejected, last one wins).
while [ $# -gt 0 ]; do
  case "$1" in
    --*=*) echo "$0: options to scripts must be of the form --name value, got '$1'" >&2; exit 1 ;;
    --*)
      name=${1#--}; name=${name//-/_}
      if [ -z "${!name+set}" ]; then echo "$0: invalid option $1" >&2; exit 1; fi
      printf -v "$name" '%s' "$2"; shift 2 ;;
    *) break ;;
  esac
done
"""

PATH_SH = r"""# Fake checkout: what ESPnet's egs2/TEMPLATE/*/path.sh does.
MAIN_ROOT=$PWD/../../..
export PATH=$PWD/utils/:$PATH
if [ -f "${MAIN_ROOT}"/tools/activate_python.sh ]; then
    . "${MAIN_ROOT}"/tools/activate_python.sh
else
    echo "[INFO] ${MAIN_ROOT}/tools/activate_python.sh is not present"
fi
. "${MAIN_ROOT}"/tools/extra_path.sh
export OMP_NUM_THREADS=1
. local/path.sh
"""

# Shared by both stand-ins: logging, the call record, and stage guards with skip rules.
COMMON = r"""log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}) $*"; }
record_call() {  # the raw arguments and the effective settings of this call
  mkdir -p stub_calls
  local n; n=$(ls stub_calls | grep -c '\.args$' || true)
  printf '%s\0' "$@" > "stub_calls/$n.args"
  : > "stub_calls/$n.env"
  local v
  for v in $RECORD; do printf '%s=%s\n' "$v" "${!v}" >> "stub_calls/$n.env"; done
  printf 'python_path=%s\n' "$(command -v "$python")" >> "stub_calls/$n.env"
}
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ] && ! [[ " $skip_stages " =~ [[:space:]]$1[[:space:]] ]]; }
"""

ASR_SH = r"""#!/usr/bin/env bash
# Stand-in for ESPnet 202511's egs2/TEMPLATE/asr1/asr.sh (see the test module's docstring).
set -e
set -u
set -o pipefail
stage=1; stop_stage=10000; skip_stages=; skip_data_prep=false; skip_train=false
skip_eval=false; skip_packing=true; skip_upload_hf=true; ngpu=1; nj=32; inference_nj=32
gpu_inference=false; dumpdir=dump; expdir=exp; python=python3; speed_perturb_factors=
feats_type=raw; audio_format=flac; fs=16k; max_wav_duration=20; token_type=bpe; nbpe=30
lang=noinfo; use_lm=true; lm_train_text=; bpe_train_text=; asr_tag=; asr_exp=; asr_config=
asr_args=; inference_config=; inference_asr_model=valid.acc.ave.pth; train_set=; valid_set=
test_sets=; asr_speech_fold_length=800; asr_text_fold_length=150; lm_fold_length=150; hf_repo=
feats_normalize=global_mvn
RECORD="stage stop_stage python lang token_type nbpe ngpu nj train_set valid_set test_sets
 asr_tag asr_config inference_config inference_asr_model audio_format speed_perturb_factors
 skip_packing use_lm lm_train_text bpe_train_text max_wav_duration"
. utils/stub_common.sh
args=("$@")
. utils/parse_options.sh
[ $# -eq 0 ] || { echo "Error: No positional arguments are required." >&2; exit 2; }
. ./path.sh
record_call "${args[@]}"
"${use_lm}" || skip_stages+=" 6 7 8 "
skip_stages+=" 9 "  # no n-gram
"${skip_eval}" && skip_stages+=" 12 13 "
"${skip_packing}" && skip_stages+=" 14 "
"${skip_upload_hf}" && skip_stages+=" 15 "
asr_exp=${asr_exp:-${expdir}/asr_${asr_tag}}
asr_stats_dir=${expdir}/asr_stats_${feats_type}_${lang}_${token_type}
run_stage 1 && { echo "stand-in: stage 1 (local/data.sh) is not modelled; use --stage 2" >&2; exit 1; }
if run_stage 3; then
  log "Stage 3: Format wav.scp: data/ -> ${dumpdir}/raw"
  [ "$audio_format" = wav ] || { echo "stand-in: only --audio_format wav" >&2; exit 1; }
  for dset in ${train_set} ${valid_set} ${test_sets}; do
    ${python} -c "import espnet2, shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)" \
      "data/${dset}" "${dumpdir}/raw/${dset}"
  done
fi
if run_stage 11; then
  log "Stage 11: ASR Training: ${asr_exp} (a copy of ${STUB_ASR_MODEL})"
  mkdir -p "${asr_exp}" "${asr_stats_dir}/train"
  ${python} - "${STUB_ASR_MODEL}/config.yaml" "${asr_exp}/config.yaml" "${asr_stats_dir}/train/feats_stats.npz" "${STUB_ENCODER:-}" <<'EOF'
import shutil, sys, yaml
conf = yaml.safe_load(open(sys.argv[1]))
shutil.copy(conf["normalize_conf"]["stats_file"], sys.argv[3])
conf["normalize_conf"]["stats_file"] = sys.argv[3]  # relative, as asr.sh writes it
if sys.argv[4]:
    conf["encoder"] = sys.argv[4]
yaml.safe_dump(conf, open(sys.argv[2], "w"), sort_keys=False, allow_unicode=True)
EOF
  cp "${STUB_ASR_MODEL}/valid.acc.best.pth" "${asr_exp}/${inference_asr_model}"
  rm -rf "${asr_exp}/images"; cp -r "${STUB_ASR_MODEL}/images" "${asr_exp}/images"
fi
if run_stage 13; then
  log "Stage 13: Scoring"
  printf '<!-- Generated by stand-in -->\n# RESULTS\n## Environments\n- stand-in\n\n|dataset|Snt|Err|\n|---|---|---|\n|%s|6|0.0|\n' \
    "${test_sets}" > "${asr_exp}/RESULTS.md"
fi
packed_model="${asr_exp}/${asr_exp##*/}_${inference_asr_model%.*}.zip"
if run_stage 14; then
  log "Stage 14: Pack model: ${packed_model}"
  ${python} -m espnet2.bin.pack asr \
    --asr_train_config "${asr_exp}"/config.yaml \
    --asr_model_file "${asr_exp}"/"${inference_asr_model}" \
    --option "${asr_stats_dir}"/train/feats_stats.npz \
    --option "${asr_exp}"/RESULTS.md \
    --option "${asr_exp}"/images \
    --outpath "${packed_model}"
fi
if run_stage 15; then
  [ -z "${hf_repo}" ] && log "ERROR: You need to setup the variable hf_repo" && exit 1
  echo "stand-in: stage 15 needs the network" >&2; exit 1
fi
log "Successfully finished."
"""

SPK_SH = r"""#!/usr/bin/env bash
# Stand-in for ESPnet 202511's egs2/TEMPLATE/spk1/spk.sh (see the test module's docstring).
set -e
set -u
set -o pipefail
stage=1; stop_stage=10000; skip_stages=; skip_data_prep=false; skip_train=false
skip_eval=false; skip_packing=true; skip_upload_hf=true; ngpu=1; nj=32; gpu_inference=false
dumpdir=dump; expdir=exp; python=python3; fold_length=120000
speed_perturb_factors="0.9 1.0 1.1"; feats_type=raw; audio_format=wav; fs=16k
spk_exp=; spk_tag=; spk_config=; spk_args=; inference_config=conf/decode.yaml
inference_model=valid.eer.best.pth; score_norm=false; qmf_func=false; train_set=; valid_set=
cohort_set=; test_sets=; lang=multilingual; hf_repo=
RECORD="stage stop_stage python ngpu nj train_set valid_set cohort_set test_sets spk_tag
 spk_config inference_config inference_model speed_perturb_factors skip_packing score_norm"
. utils/stub_common.sh
args=("$@")
. utils/parse_options.sh
[ $# -eq 0 ] || { echo "Error: No positional arguments are required." >&2; exit 2; }
. ./path.sh
record_call "${args[@]}"
"${skip_packing}" && skip_stages+=" 9 "
"${skip_upload_hf}" && skip_stages+=" 10 "
[ -n "${spk_tag}" ] || spk_tag="$(basename "${spk_config}" .yaml)_${feats_type}"
spk_exp=${spk_exp:-${expdir}/spk_${spk_tag}}
run_stage 1 && { echo "stand-in: stage 1 (local/data.sh) is not modelled; use --stage 2" >&2; exit 1; }
if [ -n "${speed_perturb_factors}" ]; then
  train_set="${train_set}_sp"; spk_exp="${spk_exp}_sp"
fi
if run_stage 3; then
  log "Stage 3: Format wav.scp: data/ -> ${dumpdir}/raw"
  for dset in ${valid_set} ${test_sets}; do
    ${python} -c "import espnet2, shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)" \
      "data/${dset}" "${dumpdir}/raw/${dset}"
  done
fi
if run_stage 5; then
  log "Stage 5: Train: ${spk_exp} (a copy of ${STUB_SPK_MODEL})"
  ${python} -c "import espnet2.tasks.spk"
  mkdir -p "${spk_exp}"
  cp "${STUB_SPK_MODEL}/config.yaml" "${STUB_SPK_MODEL}/valid.eer.best.pth" "${spk_exp}/"
  rm -rf "${spk_exp}/images"; cp -r "${STUB_SPK_MODEL}/images" "${spk_exp}/images"
fi
if run_stage 8; then
  log "Stage 8: Calculate metrics."
  printf '<!-- Generated by stand-in -->\n# RESULTS\n## Environments\n- stand-in\n\n| Model name | EER(%%) | minDCF |\n|---|---|---|\n| %s | 10.000 | 0.50000 |' \
    "$(echo "${spk_config}" | cut -d'.' -f1)" > "${spk_exp}/RESULTS.md"
fi
packed_model="${spk_exp}/${spk_exp##*/}_${inference_model%.*}.zip"
if run_stage 9; then
  log "Stage 9: Pack model: ${packed_model}"
  ${python} -m espnet2.bin.pack spk \
    --train_config "${spk_exp}"/config.yaml \
    --model_file "${spk_exp}"/"${inference_model}" \
    --option "${spk_exp}"/RESULTS.md \
    --option "${spk_exp}"/images \
    --outpath "${packed_model}"
fi
if run_stage 10; then
  [ -z "${hf_repo}" ] && log "ERROR: You need to setup the variable hf_repo" && exit 1
  echo "stand-in: stage 10 needs the network" >&2; exit 1
fi
log "Successfully finished."
"""


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def python_wrapper(path: Path, log: Path, target: str) -> None:
    """An executable named like a Python that logs its arguments and runs ``target``."""
    pythonpath = os.environ.get("PYTHONPATH", "")
    write(path, f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> "{log}"\n'
                + (f'export PYTHONPATH="{pythonpath}"\n' if pythonpath else "")
                + f'exec "{target}" "$@"\n', 0o755)


def make_checkout(root: Path) -> dict:
    """A fake ESPnet checkout at ``root`` (layout of ESPnet 202511) and the two PATHs.

    Returns {"root", "recipe_log" (calls of the recipe's Python), "caller_log" (calls of the
    caller's Python), "env" (environment to start an overlay with)}.
    """
    template = root / "egs2/TEMPLATE"
    write(template / "asr1/asr.sh", ASR_SH, 0o755)
    write(template / "asr1/utils/stub_common.sh", COMMON)
    write(template / "asr1/path.sh", PATH_SH)
    write(template / "asr1/cmd.sh", "export train_cmd=run.pl cuda_cmd=run.pl decode_cmd=run.pl\n")
    write(template / "asr1/utils/parse_options.sh", PARSE_OPTIONS, 0o755)
    write(template / "asr1/steps/README", "Kaldi's steps/ (fake checkout)\n")
    write(template / "spk1/spk.sh", SPK_SH, 0o755)
    write(template / "spk1/path.sh", PATH_SH)
    for name in ("utils", "steps"):
        (template / "spk1" / name).symlink_to(f"../asr1/{name}")
    links = {"asr1": ("asr.sh", "path.sh", "cmd.sh", "utils", "steps"),
             "spk1": ("spk.sh", "path.sh", "utils", "steps")}
    for recipe in ("aishell/asr1", "librispeech/asr1", "voxceleb/spk1"):
        kind = recipe.split("/")[1]
        rdir = root / "egs2" / recipe
        rdir.mkdir(parents=True)
        for name in links[kind]:
            # as in ESPnet, e.g. egs2/aishell/asr1/utils -> ../../TEMPLATE/asr1/utils
            source = "asr1" if name in ("utils", "steps") else kind
            (rdir / name).symlink_to(f"../../TEMPLATE/{source}/{name}")
        write(rdir / "local/path.sh", "")
    recipe_bin, caller_bin = root / "recipe_python_bin", root.parent / "caller_bin"
    recipe_log, caller_log = root / "recipe_python.log", root.parent / "caller_python.log"
    for name in ("python3", "python", "mypython"):
        python_wrapper(recipe_bin / name, recipe_log, sys.executable)
    write(root / "tools/activate_python.sh",
          f'#!/usr/bin/env bash\nexport PATH="{recipe_bin}:$PATH"\n')
    write(root / "tools/extra_path.sh", "")
    for name in ("python3", "python"):
        # the caller's Python: no ESPnet, no espnet_imlspike
        write(caller_bin / name,
              f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> "{caller_log}"\n'
              'echo "$0: No module named espnet_imlspike (the caller\'s Python)" >&2\nexit 1\n',
              0o755)
    env = {"PATH": f"{caller_bin}:/usr/bin:/bin", "HOME": str(root.parent),
           "ESPNET_ROOT": str(root), "LC_ALL": "C.UTF-8"}
    return {"root": root, "recipe_log": recipe_log, "caller_log": caller_log, "env": env}


def run_overlay(script, env, *args, cwd=None):
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True,
                          text=True, timeout=900, cwd=cwd)


def calls(recipe: Path):
    """[(raw args, effective settings)] of each stand-in call, in order."""
    out = []
    directory = recipe / "stub_calls"
    for n in range(len(list(directory.glob("*.args")))):
        raw = (directory / f"{n}.args").read_text().split("\0")[:-1]
        env = dict(line.split("=", 1) for line in (directory / f"{n}.env").read_text().splitlines())
        out.append((raw, env))
    return out


def copy_data_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("wav.scp", "text", "utt2spk", "spk2utt"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def overlay_functions(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'set -euo pipefail; . "{REPO}/egs2/_common/overlay.sh"; '
                           + script], capture_output=True, text=True, timeout=60)


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
    done = run_overlay(REPO / "egs2/voxceleb/spk1/run.sh", dict(env, ESPNET_ROOT=str(tmp_path)),
                       "--skip_energy", "maybe")
    assert done.returncode != 0 and "--skip_energy expects true or false" in done.stderr


def test_options_are_read_as_espnets_parse_options_reads_them():
    done = overlay_functions(
        'opt_value lang zh --lang en --nbpe 5 --lang ja; '
        'opt_value train_set train --train-set tr --test_sets "a b"; '
        'opt_value test_sets none --train_set tr --test_sets "a b"; '
        'opt_value nbpe 30 --lang en; '
        'pick_energy_set test "dev test"; pick_energy_set test "x y"')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:6] == ["ja", "tr", "a b", "30", "test", "x"]


def test_overlay_options_are_taken_out_and_config_paths_made_absolute(tmp_path):
    (tmp_path / "mine.yaml").write_text("encoder: transformer\n")
    done = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; . "{REPO}/egs2/_common/overlay.sh"; '
         'skip_energy=false energy_set="" energy_opts=""; '
         'split_overlay_args --asr_config mine.yaml --skip-energy true --lang en '
         '--energy_opts "--max_utterances 3" --energy_set dev --inference_config conf/x.yaml; '
         'printf "%s\\n" "${user_args[@]}" "$skip_energy" "$energy_opts" "$energy_set"'],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:9] == [
        "--asr_config", str(tmp_path / "mine.yaml"), "--lang", "en",
        "--inference_config", "conf/x.yaml",  # not here: read in the ESPnet recipe dir
        "true", "--max_utterances 3", "dev"]


@pytest.fixture(scope="module")
def aishell_run(tiny_iml_asr, tmp_path_factory):
    """The aishell overlay on the fake checkout: stages 3-14 with user options (only
    asr.sh's own, so that the overlay of before issue 11 runs this too)."""
    base = tmp_path_factory.mktemp("aishell_overlay")
    checkout = make_checkout(base / "espnet")
    recipe = checkout["root"] / "egs2/aishell/asr1"
    dirs = tiny_iml_asr["dirs"]
    for name, split in (("tr", "train"), ("dv", "valid"), ("test", "test")):
        copy_data_dir(dirs[split], recipe / "data" / name)
    env = dict(checkout["env"], STUB_ASR_MODEL=str(tiny_iml_asr["exp"]))
    done = run_overlay(
        REPO / "egs2/aishell/asr1/run.sh", env,
        "--stage", "3", "--audio_format", "wav", "--skip_packing", "false",
        "--train_set", "tr", "--valid_set", "dv", "--test_sets", "dv test",
        "--lang", "en", "--token_type", "word", "--nbpe", "7", "--ngpu", "0", "--nj", "1",
        "--python", "mypython",
    )
    return {"done": done, "recipe": recipe, "checkout": checkout, "env": env,
            "exp": recipe / "exp/asr_train_asr_iml_spikeformer", "test": dirs["test"],
            "source_exp": tiny_iml_asr["exp"]}


@pytest.mark.slow
def test_aishell_overlay_passes_every_option_to_asr_sh(aishell_run):
    done = aishell_run["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (_, before), (_, after) = calls(aishell_run["recipe"])
    config = str(REPO / "egs2/aishell/asr1/conf/tuning/train_asr_iml_spikeformer.yaml")
    for settings in (before, after):
        # the user's options win over the overlay's defaults ...
        assert settings["lang"] == "en" and settings["token_type"] == "word"
        assert settings["nbpe"] == "7" and settings["ngpu"] == "0" and settings["nj"] == "1"
        assert (settings["train_set"], settings["valid_set"], settings["test_sets"]) == \
            ("tr", "dv", "dv test")
        assert settings["python"] == "mypython"
        assert settings["python_path"] == str(aishell_run["checkout"]["root"]
                                              / "recipe_python_bin/mypython")
        # ... and the defaults hold where the user gave nothing
        assert settings["asr_config"] == config and settings["use_lm"] == "false"
        assert settings["asr_tag"] == "train_asr_iml_spikeformer"
        assert settings["inference_config"] == "conf/decode_asr_transformer.yaml"
        assert settings["speed_perturb_factors"] == "0.9 1.0 1.1"
        assert settings["lm_train_text"] == "data/tr/text"  # follows --train_set
    # scoring and packing are split around the energy step
    assert (before["stage"], before["stop_stage"]) == ("3", "13")
    assert (after["stage"], after["stop_stage"]) == ("14", "10000")


@pytest.mark.slow
def test_aishell_energy_step_runs_with_the_recipes_python(aishell_run):
    """The bug of issue 11: the energy step ran the caller's python3 (no espnet_imlspike)."""
    assert aishell_run["done"].returncode == 0, aishell_run["done"].stderr[-3000:]
    checkout = aishell_run["checkout"]
    assert not checkout["caller_log"].exists(), checkout["caller_log"].read_text()
    recipe_calls = checkout["recipe_log"].read_text().splitlines()
    energy = [c for c in recipe_calls if "espnet_imlspike.bin.energy_report" in c]
    assert len(energy) == 1 and energy[0].startswith(
        str(checkout["root"] / "recipe_python_bin/mypython"))  # --python reached it
    # the paper's test set, not the first of --test_sets
    assert "--data_path_and_name_and_type dump/raw/test/wav.scp,speech,sound" in energy[0]
    exp = aishell_run["exp"]
    for name in ("energy.json", "energy.md", "firing_rates.npz", "firing_rates.png"):
        assert (exp / "energy" / name).is_file(), name


@pytest.mark.slow
def test_packed_asr_model_carries_the_energy_report(aishell_run):
    assert aishell_run["done"].returncode == 0, aishell_run["done"].stderr[-3000:]
    exp = aishell_run["exp"]
    results = (exp / "RESULTS.md").read_text()
    assert results.startswith("<!-- Generated by stand-in -->")  # scoring's table kept
    assert results.count("espnet_imlspike energy report: begin") == 1
    assert "## Energy report" in results and "| Model | SNN |" in results
    assert "### Spike statistics" in results and "| Neuron layer | Firing rate |" in results
    assert (exp / "images/energy_firing_rates.png").is_file()
    packed = exp / "asr_train_asr_iml_spikeformer_valid.acc.ave.zip"
    with zipfile.ZipFile(packed) as z:
        names = z.namelist()
        packed_results = z.read(f"{exp.relative_to(aishell_run['recipe'])}/RESULTS.md").decode()
    assert packed_results == results
    assert any(n.endswith("images/energy_firing_rates.png") for n in names), names


@pytest.mark.slow
def test_packed_asr_model_loads_with_stock_from_pretrained(aishell_run, tmp_path):
    """A fresh process, no import of ours: ESPnet finds the encoder through the plugin."""
    assert aishell_run["done"].returncode == 0, aishell_run["done"].stderr[-3000:]
    packed = aishell_run["exp"] / "asr_train_asr_iml_spikeformer_valid.acc.ave.zip"
    wav = next(iter((aishell_run["test"] / "wav.scp").read_text().split("\n"))).split()[1]
    source = aishell_run["source_exp"]
    code = f"""
import soundfile
from espnet2.bin.asr_inference import Speech2Text
options = dict(beam_size=2, ctc_weight=0.3, nbest=1)
packed = Speech2Text.from_pretrained({str(packed)!r}, **options)
print("encoder", type(packed.asr_model.encoder).__name__)
speech, _ = soundfile.read({wav!r})
print("packed", packed(speech)[0][0])
original = Speech2Text({str(source / 'config.yaml')!r}, {str(source / 'valid.acc.best.pth')!r}, **options)
print("original", original(speech)[0][0])
from espnet_model_zoo.downloader import ModelDownloader, str_to_hash
print("cache", ModelDownloader().cachedir / str_to_hash({str(packed)!r}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    shutil.rmtree(lines["cache"], ignore_errors=True)  # the unpacked copy in the model zoo's cache
    assert lines["encoder"] == "IMLSpikeformerEncoder"
    assert lines["packed"] == lines["original"]


@pytest.mark.slow
def test_ann_config_skips_the_energy_step(tiny_iml_asr, tmp_path):
    checkout = make_checkout(tmp_path / "espnet")
    recipe = checkout["root"] / "egs2/aishell/asr1"
    env = dict(checkout["env"], STUB_ASR_MODEL=str(tiny_iml_asr["exp"]),
               STUB_ENCODER="transformer")
    done = run_overlay(REPO / "egs2/aishell/asr1/run.sh", env, "--stage", "11",
                       "--stop_stage", "13", "--asr_config",
                       str(REPO / "egs2/aishell/asr1/conf/tuning/train_asr_transformer_30.35m.yaml"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "skipped, encoder 'transformer' is not a spiking encoder" in done.stdout
    assert len(calls(recipe)) == 1  # stop_stage 13: no second asr.sh call
    assert not (recipe / "exp/asr_train_asr_transformer_30.35m/energy").exists()


@pytest.mark.slow
def test_librispeech_overlay_defaults_overrides_and_energy_options(tiny_iml_asr, tmp_path):
    checkout = make_checkout(tmp_path / "espnet")
    recipe = checkout["root"] / "egs2/librispeech/asr1"
    for name in ("train_clean_100", "dev", "test_a", "test_b"):
        copy_data_dir(tiny_iml_asr["dirs"]["test"], recipe / "data" / name)
    env = dict(checkout["env"], STUB_ASR_MODEL=str(tiny_iml_asr["exp"]))
    done = run_overlay(REPO / "egs2/librispeech/asr1/run.sh", env, "--stage", "3",
                       "--stop_stage", "13", "--audio_format", "wav", "--nbpe", "300",
                       "--train_set", "train_clean_100", "--test_sets", "test_a test_b",
                       "--energy_set", "test_b", "--energy_opts", "--max_utterances 2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ((raw, settings),) = calls(recipe)  # stop_stage 13: no second call
    assert "--energy_set" not in raw and "--energy_opts" not in raw  # the overlay's own
    assert settings["nbpe"] == "300" and settings["lang"] == "en"
    assert settings["bpe_train_text"] == "data/train_clean_100/text"
    assert settings["max_wav_duration"] == "30" and settings["python"] == "python3"
    energy = [c for c in checkout["recipe_log"].read_text().splitlines()
              if "espnet_imlspike.bin.energy_report" in c]
    assert len(energy) == 1 and "dump/raw/test_b/wav.scp,speech,sound" in energy[0]
    assert "--max_utterances 2" in energy[0]
    exp = recipe / "exp/asr_train_asr_iml_spikeformer_e18"
    assert '"utterances": 2' in (exp / "energy/energy.json").read_text()
    # a rerun of scoring (stage 13 only, RESULTS.md kept here) replaces the report and its copy
    done = run_overlay(REPO / "egs2/librispeech/asr1/run.sh", env, "--stage", "13",
                       "--stop_stage", "13", "--audio_format", "wav", "--test_sets", "test_a test_b",
                       "--energy_set", "test_a", "--energy_opts", "--max_utterances 3",
                       "--skip_stages", "13")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert '"utterances": 3' in (exp / "energy/energy.json").read_text()
    assert (exp / "RESULTS.md").read_text().count("espnet_imlspike energy report: begin") == 1


SPK_TRAIN = "espnet2.bin.spk_train"


@pytest.fixture(scope="module")
def tiny_iml_spk(tiny_iml_asr, tmp_path_factory):
    """A tiny IML-Spikeformer speaker model trained for 1 epoch by the stock spk_train.

    The tone corpus's 4 speakers; the validation trials are all pairs of the valid split.
    """
    out = tmp_path_factory.mktemp("tiny_iml_spk")
    dirs = tiny_iml_asr["dirs"]
    train = copy_data_dir(dirs["train"], out / "train")
    shutil.copy(train / "spk2utt", train / "category2utt")  # as spk.sh stage 3
    valid = out / "valid"
    valid.mkdir()
    wavs = dict(l.split(maxsplit=1) for l in (dirs["valid"] / "wav.scp").read_text().splitlines())
    spk = dict(l.split(maxsplit=1) for l in (dirs["valid"] / "utt2spk").read_text().splitlines())
    keys = sorted(wavs)
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]]
    (valid / "trial.scp").write_text("".join(f"{a}*{b} {wavs[a]}\n" for a, b in pairs))
    (valid / "trial2.scp").write_text("".join(f"{a}*{b} {wavs[b]}\n" for a, b in pairs))
    (valid / "trial_label").write_text(
        "".join(f"{a}*{b} {int(spk[a] == spk[b])}\n" for a, b in pairs))
    config = SPK_CONF / "train_spk_iml_spikeformer_tiny.yaml"
    spk_num = str(len((train / "spk2utt").read_text().split("\n")) - 1)
    common = ["--spk2utt", str(train / "spk2utt"), "--spk_num", spk_num, "--config", str(config),
              "--ngpu", "0"]
    stats = out / "stats"
    steps = [
        [SPK_TRAIN, "--collect_stats", "true", "--use_preprocessor", "false",
         "--train_data_path_and_name_and_type", f"{train}/wav.scp,speech,sound",
         "--valid_data_path_and_name_and_type", f"{valid}/trial.scp,speech,sound",
         "--train_shape_file", str(train / "wav.scp"),
         "--valid_shape_file", str(valid / "trial.scp"),
         "--output_dir", str(stats / "stats.1"), *common],
        ["espnet2.bin.aggregate_stats_dirs", "--input_dir", str(stats / "stats.1"),
         "--skip_sum_stats", "--output_dir", str(stats)],
        [SPK_TRAIN, "--use_preprocessor", "true", "--output_dir", str(out / "exp"),
         "--train_data_path_and_name_and_type", f"{train}/wav.scp,speech,sound",
         "--train_data_path_and_name_and_type", f"{train}/utt2spk,spk_labels,text",
         "--train_shape_file", f"{stats}/train/speech_shape",
         "--valid_data_path_and_name_and_type", f"{valid}/trial.scp,speech,sound",
         "--valid_data_path_and_name_and_type", f"{valid}/trial2.scp,speech2,sound",
         "--valid_data_path_and_name_and_type", f"{valid}/trial_label,spk_labels,text",
         "--valid_shape_file", f"{stats}/valid/speech_shape",
         "--fold_length", "120000", "--max_epoch", "1", "--seed", "0", *common],
    ]
    for step in steps:
        done = subprocess.run([sys.executable, "-m", *step], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return {"exp": out / "exp", "test": dirs["test"]}


@pytest.fixture(scope="module")
def voxceleb_run(tiny_iml_spk, tmp_path_factory):
    """The voxceleb overlay on the fake checkout: spk.sh stages 3-9, the recipe's default
    python3 (no --python), every option the user gives passed on."""
    base = tmp_path_factory.mktemp("voxceleb_overlay")
    checkout = make_checkout(base / "espnet")
    recipe = checkout["root"] / "egs2/voxceleb/spk1"
    copy_data_dir(tiny_iml_spk["test"], recipe / "data/tone_test")
    env = dict(checkout["env"], STUB_SPK_MODEL=str(tiny_iml_spk["exp"]))
    config = SPK_CONF / "train_spk_iml_spikeformer_tiny.yaml"
    done = run_overlay(
        REPO / "egs2/voxceleb/spk1/run.sh", env,
        "--stage", "3", "--spk_config", str(config), "--train_set", "tone_train",
        "--valid_set", "tone_test", "--test_sets", "tone_test", "--cohort_set", "tone_cohort",
        "--ngpu", "0", "--nj", "1", "--inference_config", str(SPK_CONF / "decode.yaml"),
        "--skip_packing", "false",
    )
    return {"done": done, "recipe": recipe, "checkout": checkout, "config": config,
            "exp": recipe / "exp/spk_train_spk_iml_spikeformer_tiny_sp", "test": tiny_iml_spk["test"],
            "source_exp": tiny_iml_spk["exp"]}


@pytest.mark.slow
def test_voxceleb_overlay_passes_every_option_and_runs_energy_with_the_recipes_python(
        voxceleb_run):
    done = voxceleb_run["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (_, before), (_, after) = calls(voxceleb_run["recipe"])
    for settings in (before, after):
        assert (settings["train_set"], settings["valid_set"], settings["test_sets"],
                settings["cohort_set"]) == ("tone_train", "tone_test", "tone_test", "tone_cohort")
        assert settings["ngpu"] == "0" and settings["nj"] == "1"
        assert settings["spk_config"] == str(voxceleb_run["config"])
        assert settings["inference_config"] == str(SPK_CONF / "decode.yaml")
        assert settings["spk_tag"] == "train_spk_iml_spikeformer_tiny"
        assert settings["speed_perturb_factors"] == "0.9 1.0 1.1"
        assert settings["python"] == "python3"
    assert (before["stage"], before["stop_stage"], after["stage"]) == ("3", "8", "9")
    checkout = voxceleb_run["checkout"]
    assert not checkout["caller_log"].exists(), checkout["caller_log"].read_text()
    energy = [c for c in checkout["recipe_log"].read_text().splitlines()
              if "espnet_imlspike.bin.energy_report" in c]
    assert len(energy) == 1
    assert energy[0].startswith(str(checkout["root"] / "recipe_python_bin/python3"))
    assert "--spk_train_config exp/spk_train_spk_iml_spikeformer_tiny_sp/config.yaml" in energy[0]
    assert "data/tone_test/wav.scp,speech,sound" in energy[0]
    exp = voxceleb_run["exp"]
    results = (exp / "RESULTS.md").read_text()
    assert "| Model name | EER(%) | minDCF |" in results and "## Energy report" in results
    assert "### Spike statistics" in results
    with zipfile.ZipFile(exp / f"{exp.name}_valid.eer.best.zip") as z:
        names = z.namelist()
        assert "## Energy report" in z.read(
            f"{exp.relative_to(voxceleb_run['recipe'])}/RESULTS.md").decode()
    assert any(n.endswith("images/energy_firing_rates.png") for n in names), names


@pytest.mark.slow
def test_packed_spk_model_loads_with_stock_from_pretrained(voxceleb_run, tmp_path):
    assert voxceleb_run["done"].returncode == 0, voxceleb_run["done"].stderr[-3000:]
    exp = voxceleb_run["exp"]
    packed = exp / f"{exp.name}_valid.eer.best.zip"
    wav = (voxceleb_run["test"] / "wav.scp").read_text().split("\n")[0].split()[1]
    source = voxceleb_run["source_exp"]
    code = f"""
import soundfile, torch
from espnet2.bin.spk_inference import Speech2Embedding
packed = Speech2Embedding.from_pretrained({str(packed)!r})
print("encoder", type(packed.spk_model.encoder).__name__)
speech, _ = soundfile.read({wav!r}, dtype="float32")
a = packed(speech)
original = Speech2Embedding({str(source / 'config.yaml')!r}, {str(source / 'valid.eer.best.pth')!r})
b = original(speech)
print("shape", tuple(a.shape))
print("max_diff", float((a - b).abs().max()))
from espnet_model_zoo.downloader import ModelDownloader, str_to_hash
print("cache", ModelDownloader().cachedir / str_to_hash({str(packed)!r}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    shutil.rmtree(lines["cache"], ignore_errors=True)
    assert lines["encoder"] == "IMLSpikeformerSpeakerEncoder"
    assert lines["shape"] == "(1, 32)"
    assert float(lines["max_diff"]) == 0.0
