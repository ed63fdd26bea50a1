"""Run a stock ESPnet entry point on a machine that lacks ESPnet's optional packages.

    python bench/espnet_device.py -m espnet2.bin.asr_train --config ... (asr_train's args)

The GPU machines have PyTorch but not ESPnet; ESPnet and its small dependencies travel as
wheels, but ESPnet's task modules also import, at module level, packages that ASR
training with precomputed features never calls (librosa, numba, g2p_en, hydra, ...).
This runner puts a finder at the *end* of ``sys.meta_path``: an installed package is
always used; only a listed package that is missing gets an inert stand-in, whose every
attribute is an object that raises when used for real (it only passes through as a
decorator). Then it registers this repository's encoders (what the installed
``espnet_imlspike.pth`` hook does) and runs the module as ``python -m`` would.

``IMLSPIKE_MEMORY_JSON=path`` writes the process's CUDA peak memory (allocated and
reserved) to ``path`` at exit, with the CUDA-graph pools and the eager cache per stream
held then.
"""

import atexit
import importlib.abc
import importlib.machinery
import json
import os
import runpy
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = {
    "librosa", "numba", "llvmlite", "g2p_en", "nltk", "hydra", "omegaconf", "antlr4",
    "ci_sdr", "fast_bss_eval", "tacotron_cleaner", "jaconv", "inflect", "unidecode",
    "soundfile", "espnet_tts_frontend", "pypinyin", "sklearn", "pandas", "torchaudio",
    "vietnamese_cleaner", "g2pk", "pyopenjtalk", "resampy", "opt_einsum", "einops",
    "torch_complex", "jamo", "matplotlib",
}


class Inert:
    """Stand-in for anything of a missing optional package."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Inert(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]  # used as a decorator at import time
        return Inert(f"{self._name}()")

    def __mro_entries__(self, bases):
        return (object,)



class _InertLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        def stand_in(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return Inert(f"{spec.name}.{attr}")

        module.__getattr__ = stand_in
        module.__inert__ = True
        return module

    def exec_module(self, module):
        pass


class OptionalFinder(importlib.abc.MetaPathFinder):
    """Last finder on sys.meta_path: inert modules for missing optional packages."""

    def find_spec(self, fullname, path, target=None):
        top = fullname.split(".")[0]
        if top not in OPTIONAL:
            return None
        if fullname != top:  # a submodule: only of a stand-in package
            parent = sys.modules.get(top)
            if parent is None or not getattr(parent, "__inert__", False):
                return None
        return importlib.machinery.ModuleSpec(fullname, _InertLoader(), is_package=True)


def write_memory(path: str) -> None:
    """Peaks, and what the allocator holds at exit: CUDA-graph pools (they only grow, and
    their memory serves no eager tensor) and the eager cache per stream."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        segments = torch.cuda.memory_snapshot(include_traces=False)
        pool = sum(s["total_size"] for s in segments
                   if tuple(s.get("segment_pool_id", (0, 0))) != (0, 0))
        streams = {}
        for s in segments:
            if tuple(s.get("segment_pool_id", (0, 0))) == (0, 0):
                streams[str(s["stream"])] = streams.get(str(s["stream"]), 0) + s["total_size"]
        Path(path).write_text(json.dumps({
            "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "exit_graph_pool_gib": pool / 2**30,
            "exit_eager_cache_gib_by_stream": {k: v / 2**30 for k, v in streams.items()},
            "allocator_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        }))


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit(__doc__)
    module = sys.argv[2]
    sys.argv = [module] + sys.argv[3:]
    sys.meta_path.append(OptionalFinder())
    sys.path.insert(0, str(REPO))
    import espnet_imlspike.autoload  # noqa: F401  (what the installed .pth does)

    if os.environ.get("IMLSPIKE_MEMORY_JSON"):
        atexit.register(write_memory, os.environ["IMLSPIKE_MEMORY_JSON"])
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
