"""A step's Triton kernels compiled in parallel before the step runs (a first run's cost).

Triton compiles a kernel variant (dtypes, constants, alignments) when it first launches,
one after another: its compiler pipeline, ``ptxas``, then a C launcher built with the
system's compiler. The spiking encoder's first training step launches about twenty
variants, several seconds on a machine whose Triton disk cache (``~/.triton/cache``) is
empty, and issue 12 counts that cost in the first 300 steps.

:func:`compile_ahead` runs the step once with every launch of this package's kernels
that would compile skipped and recorded (Triton's ``jit_cache_hook``), then compiles the
recorded variants on a pool of threads (Triton's ``AsyncCompileMode``; LLVM, ``ptxas``
and the C compiler run outside the GIL) and builds their launchers there too. The real
step then finds every kernel compiled, the one-element launch with which
:func:`~.kernels.kernels_work` first tests the kernels on a device included (recorded
with the step; the test itself runs with the real step). The recording step computes on
buffers that the skipped kernels leave unset: the caller discards its outputs and
restores what it changed, as the CUDA-graph warm-up (:mod:`.graphs`, its only caller)
does. Any failure leaves the kernels to compile at launch, as before;
``IMLSPIKE_COMPILE_AHEAD=0`` turns it off.
"""

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict

import torch

from espnet_imlspike.fast import kernels

PACKAGE = __name__.split(".")[0]


def enabled() -> bool:
    """Whether :func:`compile_ahead` runs (``IMLSPIKE_COMPILE_AHEAD``, default on)."""
    return kernels.triton is not None and os.environ.get("IMLSPIKE_COMPILE_AHEAD", "1") != "0"


def record_uncompiled(recorded: Dict[str, object]) -> Callable:
    """Triton ``jit_cache_hook`` that records this package's variants about to compile
    (``specialization_data`` -> kernel) and skips their launch; other kernels go on."""

    def hook(*, fn, compile, **_):
        if fn.module.split(".")[0] != PACKAGE:
            return None
        recorded.setdefault(compile["specialization_data"], fn.jit_function)
        return True

    return hook


def compile_ahead(step: Callable[[], None], device: torch.device) -> int:
    """Run ``step`` with this package's uncompiled Triton launches skipped, compile what
    it would have compiled on a thread pool; the number of variants compiled ahead (0
    where off, nothing to compile, or anything failed: then launches compile as usual)."""
    if not enabled() or not kernels.may_work(device):
        return 0
    try:
        from triton import knobs
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # a Triton without the hooks: compile at launch
        return 0
    recorded: Dict[str, object] = {}
    previous = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = record_uncompiled(recorded)
    try:
        with kernels.assumed_working(device):  # the first test's launch is recorded too
            kernels.probe(device)
            step()
    except Exception as error:  # the real step that follows reports real errors
        logging.debug("compile-ahead step failed (%s); kernels compile at launch", error)
        return 0
    finally:
        knobs.runtime.jit_cache_hook = previous
    if not recorded:
        return 0
    start = time.perf_counter()
    try:
        _compile(recorded, AsyncCompileMode)
    except Exception as error:  # any failure of Triton's tool chain or internals
        logging.warning("spiking encoder: compiling Triton kernels ahead failed (%s: %s); "
                        "they compile at launch", type(error).__name__, error)
        return 0
    logging.info("spiking encoder: %d Triton kernel variants compiled ahead in %.2f s",
                 len(recorded), time.perf_counter() - start)
    return len(recorded)


def _compile(recorded: Dict[str, object], async_mode) -> None:
    from triton.runtime.driver import driver

    workers = min(len(recorded), len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        with async_mode(pool):  # preload submits to the pool; the exit waits for all
            pending = [fn.preload(data) for data, fn in recorded.items()]
        compiled = [p.result() if hasattr(p, "result") else p for p in pending]
        # the C launchers (one compiler call each, cached on disk for the first launch);
        # list() waits for them and raises a failure here
        list(pool.map(lambda k: driver.active.launcher_cls(k.src, k.metadata), compiled))
