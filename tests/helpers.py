"""Helpers shared by the tests: repository paths, the recipe scripts on sys.path, and a
runner for ESPnet entry points in fresh interpreters."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYSCRIPTS = REPO / "egs2/_common/pyscripts"
TONE_CONF = REPO / "conf/asr/tone_demo"
TONE_SPK_CONF = REPO / "conf/spk/tone_demo"

# recipe-side Python (corpus synthesis, pipelines), imported as ESPnet's pyscripts are
if str(PYSCRIPTS) not in sys.path:
    sys.path.insert(0, str(PYSCRIPTS))


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


def build_spk_model(config, spk_num):
    """An ESPnet speaker model built from a config by the stock SpeakerTask."""
    from espnet2.tasks.spk import SpeakerTask

    from espnet_imlspike.registration import register_spk

    register_spk()
    args = SpeakerTask.get_parser().parse_args(
        ["--config", str(config), "--spk_num", str(spk_num)]
    )
    return SpeakerTask.build_model(args)
