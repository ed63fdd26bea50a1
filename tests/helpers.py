"""Helpers shared by the tests: repository paths, the recipe scripts on sys.path, a
runner for ESPnet entry points in fresh interpreters, a tracker of live tensor bytes, and a
compiler backend that records the traced graphs."""

import os
import subprocess
import sys
import weakref
from pathlib import Path

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

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


class LiveBytes(TorchDispatchMode):
    """The largest total size of the tensors created inside it and still alive (each
    operator's outputs counted until their storage is freed; views and in-place results,
    which share an input's storage, are not new)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.counted = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.counted and key not in inputs:
                    self.counted.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, size)
        return out

    def _freed(self, key, size):
        self.live -= size
        self.counted.discard(key)


class CompilerRecorder:
    """A ``torch.compile`` backend that keeps each traced graph and runs it as traced."""

    def __init__(self):
        self.graphs = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module)
        return graph_module.forward

    def targets(self):
        return [node.target for graph in self.graphs for node in graph.graph.nodes
                if node.op == "call_function"]
