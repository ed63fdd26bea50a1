"""bench/step_profile.py: its arithmetic on a hand-built trace (the README's busy and idle
figures come from it), and its iteration counting on a real backward loop."""

import importlib.util
import json

import torch

from helpers import REPO


def load():
    spec = importlib.util.spec_from_file_location("step_profile", REPO / "bench/step_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel(name, ts, dur):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}


def host(name, ts, dur):
    return {"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": dur}


def test_busy_time_is_the_union_of_gpu_intervals_and_gaps_go_to_the_op_that_ended_them(
        tmp_path):
    # GPU (us): [0, 10) and [5, 15) overlap (busy 15), idle [15, 30), [30, 35), idle
    # [35, 50), [50, 60). Host: "outer" holds [0, 40) with "inner" nested at [28, 31)
    # (not top-level); "late" [45, 55); Python between 40 and 45.
    events = [kernel("a", 0, 10), kernel("b", 5, 10), kernel("a", 30, 5), kernel("c", 50, 10),
              host("outer", 0, 40), host("inner", 28, 3), host("late", 45, 10)]
    (tmp_path / "t.json").write_text(json.dumps({"traceEvents": events}))
    summary = load().summarize(str(tmp_path / "t.json"))
    assert summary["gpu_window_ms"] == 60 / 1e3
    assert summary["gpu_busy_ms"] == 30 / 1e3 and summary["gpu_idle_ms"] == 30 / 1e3
    assert summary["kernel_sum_ms"] == 35 / 1e3
    # the gap ending at 30 waited for "outer" (top-level at 30), the one ending at 50 for
    # "late"
    assert summary["idle_ms_by_host_op"] == [[0.015, "outer"], [0.015, "late"]]
    assert summary["kernels_ms"] == [[0.015, 2, "a"], [0.01, 1, "c"], [0.01, 1, "b"]]


def test_a_trace_without_gpu_events_says_so(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"traceEvents": [host("x", 0, 5)]}))
    assert load().summarize(str(tmp_path / "t.json")) == {"gpu_events": 0}


def test_iterations_are_counted_by_backward_calls(tmp_path, monkeypatch):
    """Iterations 2 and 3 of five are profiled (``first:count`` = 1:2), what a trainer
    with gradient accumulation still calls once per iteration."""
    out = tmp_path / "p.json"
    monkeypatch.setenv("IMLSPIKE_STEP_PROFILE_STEPS", "1:2")
    monkeypatch.setattr(torch.Tensor, "backward", torch.Tensor.backward)  # undone after
    load().install(str(out))
    weight = torch.ones(3, requires_grad=True)
    for _ in range(5):
        (weight * 2).sum().backward()
    summary = json.loads(out.read_text())
    assert summary["steps"] == 2 and summary["gpu_events"] == 0
    assert (tmp_path / "p.trace.json.gz").exists()
