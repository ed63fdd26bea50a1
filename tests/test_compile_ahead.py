"""Compiling a first step's Triton kernels ahead, in parallel (fast/compile_ahead.py).

The compilation itself needs a GPU (``bench/compile_ahead_probe.py`` times it, counts the
variants left to compile at launch, none, and checks the first step's outputs and
gradients bit-identical with and without it). Here: the recording goes through Triton's
own hook call (``JITFunction._call_hook``, as a launch that would compile makes it), and
the decisions around it: what is recorded and skipped, what is left alone, the switch,
the restored hook, the fallback when anything fails, and the warm-up that uses it.
"""

import contextlib
import json
import types

import pytest
import torch

triton = pytest.importorskip("triton")
from triton import knobs  # noqa: E402
from triton.backends.nvidia.compiler import CUDAOptions  # noqa: E402

from espnet_imlspike.fast import compile_ahead as ahead  # noqa: E402
from espnet_imlspike.fast import kernels  # noqa: E402

if not isinstance(getattr(kernels, "_fire_kernel", None), triton.runtime.JITFunction):
    pytest.skip("Triton's interpreter is on: no compilation hooks", allow_module_level=True)
REAL_COMPILE = ahead._compile


@triton.jit
def _foreign_kernel(x_ptr, BLOCK: triton.language.constexpr):  # another library's kernel
    pass


def launch(kernel, variant: int) -> bool:
    """What ``JITFunction.run`` does for a variant it has not compiled: call the cache hook
    (skip the compilation and the launch when it returns True)."""
    return bool(kernel._call_hook(
        knobs.runtime.jit_cache_hook, f"key{variant}", {"x_ptr": "*fp32"}, 0,
        {("BLOCK",): variant}, CUDAOptions(), [{}], False))


@pytest.fixture
def fake_gpu(monkeypatch):
    """compile_ahead past its device checks, with the launches of its first test of the
    kernels and of the step made through Triton's hook; _compile recorded, not run."""
    compiled = []
    monkeypatch.setattr(kernels, "may_work", lambda device: True)
    monkeypatch.setattr(kernels, "probe", lambda device: launch(kernels._fire_kernel, 1))
    monkeypatch.setattr(ahead, "_compile", lambda recorded, mode: compiled.append(recorded))
    monkeypatch.setenv("IMLSPIKE_COMPILE_AHEAD", "1")
    return compiled


def test_records_this_packages_variants_and_skips_their_launch_only():
    recorded = {}
    previous = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = ahead.record_uncompiled(recorded)
    try:
        assert launch(kernels._fire_kernel, 2048)  # skipped
        assert launch(kernels._fire_kernel, 2048)  # the same variant: recorded once
        assert not launch(_foreign_kernel, 64)  # compiles and launches as usual
    finally:
        knobs.runtime.jit_cache_hook = previous
    assert list(recorded.values()) == [kernels._fire_kernel]
    data = json.loads(next(iter(recorded)))  # what JITFunction.preload takes back
    assert data["name"].endswith("_fire_kernel") and data["constant_vals"] == [2048]


def test_the_step_runs_once_with_launches_recorded_then_they_compile(fake_gpu):
    sentinel = object()
    knobs.runtime.jit_cache_hook = sentinel  # someone else's hook, restored afterwards
    steps = []

    def step():
        steps.append(launch(kernels._fire_kernel, 256) and launch(kernels._fire_kernel, 2048)
                     and launch(kernels._fire_kernel, 256))

    try:
        count = ahead.compile_ahead(step, torch.device("cuda"))
        assert knobs.runtime.jit_cache_hook is sentinel
    finally:
        knobs.runtime.jit_cache_hook = None
    assert steps == [True]  # ran once, every launch skipped
    assert count == 3 and len(fake_gpu) == 1  # the first test's variant, 256, 2048
    constants = sorted(json.loads(data)["constant_vals"][0] for data in fake_gpu[0])
    assert constants == [1, 256, 2048]
    assert torch.device("cuda") not in kernels._working  # its first test still pending


def test_kernels_known_to_fail_stay_failed_while_recording(monkeypatch):
    device = torch.device("cuda", 3)
    monkeypatch.setattr(kernels, "_working", {device: False})
    with kernels.assumed_working(device):
        assert kernels._working[device] is False
    monkeypatch.setattr(kernels, "_working", {})
    with kernels.assumed_working(device):
        assert kernels._working[device] is True
    assert kernels._working == {}


def test_off_or_not_cuda_runs_nothing(monkeypatch):
    steps = []
    monkeypatch.setenv("IMLSPIKE_COMPILE_AHEAD", "0")
    assert ahead.compile_ahead(lambda: steps.append(1), torch.device("cuda")) == 0
    monkeypatch.setenv("IMLSPIKE_COMPILE_AHEAD", "1")
    assert ahead.compile_ahead(lambda: steps.append(1), torch.device("cpu")) == 0
    assert steps == []  # the caller's own step is the only one
    assert not kernels.may_work(torch.device("cpu"))
    monkeypatch.setenv("IMLSPIKE_TRITON", "0")
    assert not kernels.may_work(torch.device("cuda"))
    monkeypatch.setenv("IMLSPIKE_TRITON", "auto")
    monkeypatch.setattr(kernels, "_working", {torch.device("cuda"): False})
    assert not kernels.may_work(torch.device("cuda"))
    monkeypatch.setattr(kernels, "_working", {})
    assert kernels.may_work(torch.device("cuda"))  # untested: may


def test_a_failing_step_leaves_the_kernels_to_compile_at_launch(fake_gpu):
    def step():
        launch(kernels._fire_kernel, 256)
        raise RuntimeError("out of memory")

    assert ahead.compile_ahead(step, torch.device("cuda")) == 0
    assert fake_gpu == [] and knobs.runtime.jit_cache_hook is None


def test_a_failing_compilation_warns_and_leaves_the_kernels_to_compile_at_launch(
        fake_gpu, monkeypatch, caplog):
    """Triton's own preload, here without a GPU driver: it fails inside _compile."""
    monkeypatch.setattr(ahead, "_compile", REAL_COMPILE)
    assert ahead.compile_ahead(lambda: launch(kernels._fire_kernel, 256),
                               torch.device("cuda")) == 0
    assert "compiling Triton kernels ahead failed" in caplog.text
    assert "they compile at launch" in caplog.text
    assert knobs.runtime.jit_cache_hook is None


def test_the_warm_up_runs_its_step_for_the_recording_and_restores_statistics(monkeypatch):
    """graphs' warm-up hands compile_ahead a step that restores the IMLS statistics, then
    runs it once more itself; statistics end as they began."""
    from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
    from espnet_imlspike.fast import graphs

    runs = []
    monkeypatch.setattr(graphs, "compile_ahead", lambda step, device: (step(), runs.append(0)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)  # (needs a GPU)
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(20, output_size=16, attention_heads=2, linear_units=32,
                                    num_blocks=2).train()
    before = [b.clone() for b in encoder.buffers()]
    cores = []

    def core(xs, ilens):
        cores.append(1)
        return encoder(xs, ilens)[0]

    entry = types.SimpleNamespace(xs=torch.randn(2, 40, 20), ilens=torch.tensor([40, 30]))
    graphs.EncoderGraphs._warm_up(encoder, core, entry, contextlib.nullcontext(),
                                  list(encoder.parameters()))
    assert runs == [0] and len(cores) == 2
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.buffers()))
    encoder(entry.xs, entry.ilens)  # a step does move them (the test can fail)
    assert not all(torch.equal(a, b) for a, b in zip(before, encoder.buffers()))
