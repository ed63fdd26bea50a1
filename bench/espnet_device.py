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
held then. With ``IMLSPIKE_MEMORY_TRACE=1`` also ``*.trace.json``: where the reserved
memory was (per stream, CUDA-graph pools apart) when it peaked, from the allocator's history.
``IMLSPIKE_STEP_PROFILE=path.json`` profiles a few training steps (``bench/step_profile.py``).
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


def in_graph_pool(segment: dict) -> bool:
    """Whether a segment of ``torch.cuda.memory_snapshot()`` belongs to a CUDA-graph pool
    (memory no eager tensor can use) rather than the eager cache."""
    return tuple(segment.get("segment_pool_id", (0, 0))) != (0, 0)


def write_memory(path: str) -> None:
    """Peaks, and what the allocator holds at exit: CUDA-graph pools (they only grow, and
    their memory serves no eager tensor) and the eager cache per stream."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pool, streams = 0, {}
        for s in torch.cuda.memory_snapshot(include_traces=False):
            if in_graph_pool(s):
                pool += s["total_size"]
            else:
                streams[str(s["stream"])] = streams.get(str(s["stream"]), 0) + s["total_size"]
        Path(path).write_text(json.dumps({
            "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "exit_graph_pool_gib": pool / 2**30,
            "exit_eager_cache_gib_by_stream": {k: v / 2**30 for k, v in streams.items()},
            "allocator_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        }))


def write_memory_trace(path: str) -> None:
    """From the allocator's history of the whole run (``IMLSPIKE_MEMORY_TRACE=1``): the
    reserved and allocated bytes per stream (CUDA-graph pools apart) at the moment the
    reserved total peaked, the largest segments held then and the allocations just before
    (what the step was doing when a new segment was needed)."""
    import collections

    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    snapshot = torch.cuda.memory._snapshot()
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    in_pools = {s["address"] for s in snapshot["segments"] if in_graph_pool(s)}
    segments, allocated, best, total = {}, {}, {"reserved": -1}, 0
    recent = collections.deque(maxlen=24)  # (size MiB, place, action) before an event
    for index, event in enumerate(trace):
        action, address, size = event["action"], event["addr"], event["size"]
        where = "graph pool" if address in in_pools else f"stream {event['stream']}"
        if action in ("segment_alloc", "segment_map"):
            segments[address] = (size, where)
            total += size
        elif action in ("segment_free", "segment_unmap"):
            total -= segments.pop(address, (0, None))[0]
        elif action == "alloc":
            allocated[where] = allocated.get(where, 0) + size
            recent.append((round(size / 2**20, 2), where, "alloc"))
        elif action == "free_completed":
            allocated[where] = allocated.get(where, 0) - size
            recent.append((round(size / 2**20, 2), where, "free"))
        else:
            continue
        if total > best["reserved"]:
            by_place = {}
            for size, place in segments.values():
                by_place[place] = by_place.get(place, 0) + size
            best = {"reserved": total, "event": index, "reserved_by_place": by_place,
                    "allocated_by_place": dict(allocated),
                    "largest_segments": sorted(segments.values(), reverse=True)[:40],
                    "recent": list(recent)}
    gib = lambda d: {k: v / 2**30 for k, v in d.items()}  # noqa: E731
    Path(path).write_text(json.dumps({
        "events": len(trace), "complete": len(trace) < TRACE_ENTRIES,
        "peak_reserved_gib": best["reserved"] / 2**30, "peak_event": best.get("event"),
        "reserved_by_place_gib": gib(best.get("reserved_by_place", {})),
        "allocated_by_place_gib": gib(best.get("allocated_by_place", {})),
        "largest_segments_mib": [(size / 2**20, place)
                                 for size, place in best.get("largest_segments", [])],
        "events_before_peak_mib": best.get("recent", []),
    }, indent=1))


TRACE_ENTRIES = 6_000_000


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
        import torch

        if os.environ.get("IMLSPIKE_MEMORY_TRACE") == "1" and torch.cuda.is_available():
            torch.cuda.memory._record_memory_history(context=None,
                                                     max_entries=TRACE_ENTRIES)
            atexit.register(write_memory_trace, os.environ["IMLSPIKE_MEMORY_JSON"]
                            .replace(".json", ".trace.json"))
    if os.environ.get("IMLSPIKE_STEP_PROFILE"):
        sys.path.insert(0, str(REPO / "bench"))
        import step_profile

        step_profile.install(os.environ["IMLSPIKE_STEP_PROFILE"])
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
