"""Where a stock training step's time goes: the PyTorch profiler over a few iterations
of a real ``asr_train`` run (installed by ``bench/espnet_device.py`` when
``IMLSPIKE_STEP_PROFILE=path.json`` is set; ``IMLSPIKE_STEP_PROFILE_STEPS=first:count``,
default ``180:5``, profiles the ``count`` iterations after iteration ``first``).

Writes ``path.json``: the steps' wall time, the GPU's busy time (the union of kernel and
copy intervals) and idle time, the idle time by the host operator the GPU waited for, and
the kernels by GPU time (all totals over the profiled steps); and ``path.trace.json.gz``, the
profiler's trace. The profiled steps are slower than the others (the profiler's own cost):
put them outside the window a measurement reads.

    python bench/step_profile.py summarize path.trace.json.gz   # the summary, again
"""

import atexit
import bisect
import gzip
import json
import os
import sys
import time
from pathlib import Path


def install(path: str) -> None:
    """Profile iterations ``first+1 .. first+count`` of this process (from the end of one
    iteration's ``backward`` to the end of another's: ESPnet's trainer calls
    ``Tensor.backward`` once an iteration; optimizer steps are fewer with accum_grad)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    first, count = (int(v) for v in os.environ.get("IMLSPIKE_STEP_PROFILE_STEPS",
                                                   "180:5").split(":"))
    state = {"step": 0}
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)

    backward = torch.Tensor.backward

    def backward_and_count(*args, **kwargs):
        result = backward(*args, **kwargs)
        state["step"] += 1
        if state["step"] == first:
            synchronize()
            state["profiler"] = profile(activities=activities)
            state["profiler"].__enter__()
            state["start"] = time.perf_counter()
        elif state["step"] == first + count and "profiler" in state:
            finish(state["step"] - first)
        return result

    def finish(steps):
        synchronize()
        wall = time.perf_counter() - state["start"]
        profiler = state.pop("profiler")
        profiler.__exit__(None, None, None)
        trace = path.replace(".json", ".trace.json.gz")
        profiler.export_chrome_trace(trace)
        summary = summarize(trace)
        summary.update(steps=steps, wall_ms_per_step=1e3 * wall / max(steps, 1))
        Path(path).write_text(json.dumps(summary, indent=1))

    def at_exit():  # a run shorter than the window: what was profiled (an active
        if "profiler" in state:  # profiler at interpreter shutdown crashes it)
            finish(state["step"] - first)

    atexit.register(at_exit)
    torch.Tensor.backward = backward_and_count


def _union(intervals):
    """Total length and the gaps of a set of (start, end) intervals."""
    busy, gaps, end = 0.0, [], None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            if end is not None:
                gaps.append((end, start))
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    return busy, gaps


def summarize(trace_path: str, top: int = 40) -> dict:
    """The summary of a profiler trace (times in ms over the profiled steps; the window is
    the first GPU event's start to the last one's end). An idle gap is charged to the
    top-level host operator running when it ended (the launch the GPU waited for), or to
    Python between operators."""
    with gzip.open(trace_path, "rt") if trace_path.endswith(".gz") else open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in
           ("kernel", "gpu_memcpy", "gpu_memset")]
    if not gpu:
        return {"gpu_events": 0}
    host, end = [], None  # top-level host operators (not inside another)
    for e in sorted((e for e in events if e.get("ph") == "X" and e.get("cat") == "cpu_op"),
                    key=lambda e: e["ts"]):
        if end is None or e["ts"] >= end:
            host.append((e["ts"], e["ts"] + e["dur"], e["name"]))
            end = e["ts"] + e["dur"]
    starts = [h[0] for h in host]
    busy, gaps = _union([(e["ts"], e["ts"] + e["dur"]) for e in gpu])
    window = max(e["ts"] + e["dur"] for e in gpu) - min(e["ts"] for e in gpu)

    def host_at(moment):
        index = bisect.bisect_right(starts, moment) - 1
        return host[index][2] if index >= 0 and host[index][1] >= moment else "(Python)"

    by_op, kernels = {}, {}
    for a, b in gaps:
        op = host_at(b)
        by_op[op] = by_op.get(op, 0.0) + (b - a) / 1e3
    for e in gpu:
        entry = kernels.setdefault(e["name"][:90], [0.0, 0])
        entry[0] += e["dur"]
        entry[1] += 1
    return {
        "gpu_window_ms": window / 1e3, "gpu_busy_ms": busy / 1e3,
        "gpu_idle_ms": (window - busy) / 1e3,
        "kernel_sum_ms": sum(e["dur"] for e in gpu) / 1e3,
        "idle_ms_by_host_op": sorted(([round(v, 3), k] for k, v in by_op.items()),
                                     reverse=True)[:top],
        "kernels_ms": sorted(([round(v[0] / 1e3, 3), v[1], k] for k, v in kernels.items()),
                             reverse=True)[:top],
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "summarize":
        raise SystemExit(__doc__)
    print(json.dumps(summarize(sys.argv[2]), indent=1))
