"""Fast paths of the IML-Spikeformer training and inference forms (same maths, less time).

Each fast path computes what the reference modules compute (``neurons.py``,
``attention.py``, ``layers.py``, the encoders' forward) and is tested against them:

* :mod:`.firing`: an IMLS neuron (Eq. 10-11) and the synaptic layers it feeds as one
  autograd node that keeps 2 bytes per element for backward (spike count and STE mask)
  instead of two float tensors. Spikes are bit-identical to the reference. On CUDA its
  element-wise work runs as the Triton kernels of :mod:`.kernels` (one byte kept;
  ``IMLSPIKE_TRITON=0`` for the PyTorch operations).
* :mod:`.long_attention`: HD-RepSSA (Eq. 12-15) in memory linear in the sequence length
  (softmax: query chunks with recomputation in backward; linear: the decay mask as a
  chunked two-way recurrence), used when the explicit (L, L) map would be large.
  On CUDA the softmax weights (decay, scale, padding, softmax) are one Triton kernel,
  :mod:`.attention_kernels`, bit-identical to the PyTorch operations.
* :mod:`.block`: the spiking block of Eq. 4 built from the two above, with
  :mod:`.layer_norm` (LayerNorms that keep a half-precision input as it came).
* :mod:`.subsampling`: ESPnet's convolutional subsampling (the input layer) over time
  chunks, keeping only the features for backward (``IMLSPIKE_CHUNKED_INPUT=0`` turns it
  off); equal to ESPnet's module to rounding, not bit for bit (cuDNN's algorithms differ
  per shape), the one fast path that is not. Its first convolution, bias and ReLU are
  one Triton kernel on CUDA, with one for their backward (:mod:`.input_kernels`). Under
  ``torch.compile`` in inference it is one opaque operator the compiled graph calls.
* :mod:`.graphs`: on CUDA, the encoder's blocks (forward and backward) replayed as CUDA
  graphs after the eager input layer, one per bucket of (batch, length) shapes (lengths
  rounded up, padding invariance makes the valid outputs unchanged): no kernel launch
  overhead, no compiler.
  :mod:`.buckets` holds the bucket shapes, :mod:`.graph_watch` what a graph depends on
  beyond its inputs (tensors read by address, hooks); :mod:`.ranks` what the graphs need
  under ``torch.distributed`` (NCCL; ``IMLSPIKE_DDP_GRAPHS=0`` turns them off there).
  :mod:`.compile_ahead` compiles the Triton kernels of the first warm-up's step in
  parallel before it runs (a machine's first run; ``IMLSPIKE_COMPILE_AHEAD=0``: at launch).
* :mod:`.compiled_blocks`: under ``torch.compile`` in inference on CUDA, the blocks are one
  opaque operator that compiles them itself and replays them as CUDA graphs (the compiled
  graph no longer launches each block's kernels from the host;
  ``IMLSPIKE_COMPILED_GRAPHS=0`` lets the compiler trace them).

Switch: the environment variable ``IMLSPIKE_FAST`` (``auto``, the default: on for CUDA
tensors, off on the CPU; ``1``: on everywhere, as the tests use it; ``0``: off), or
:func:`fast_mode` as a context manager. ``IMLSPIKE_CUDA_GRAPHS=0`` keeps the fused
modules but turns the CUDA graphs off.
"""

import contextlib
import os
from typing import Iterator, Optional

import torch

from espnet_imlspike.errors import OptionError

MODES = ("auto", "1", "0")
_override: Optional[str] = None


def _mode() -> str:
    mode = _override if _override is not None else os.environ.get("IMLSPIKE_FAST", "auto")
    if mode not in MODES:
        raise OptionError(f"IMLSPIKE_FAST must be one of {MODES}, got {mode!r}")
    return mode


def enabled(x: torch.Tensor) -> bool:
    """Whether the fast paths apply to a computation on ``x``'s device."""
    mode = _mode()
    return mode == "1" or (mode == "auto" and x.is_cuda)


def graphs_enabled(x: torch.Tensor) -> bool:
    """Whether CUDA graphs may replay the encoder for ``x`` (fast paths on, CUDA)."""
    return (x.is_cuda and enabled(x)
            and os.environ.get("IMLSPIKE_CUDA_GRAPHS", "1") != "0")


@contextlib.contextmanager
def fast_mode(mode: str) -> Iterator[None]:
    """Force the fast paths ``"1"`` (on), ``"0"`` (off) or ``"auto"`` inside the block."""
    global _override
    if mode not in MODES:
        raise OptionError(f"fast mode must be one of {MODES}, got {mode!r}")
    previous, _override = _override, mode
    try:
        yield
    finally:
        _override = previous


def has_hooks(module: torch.nn.Module) -> bool:
    """True if any submodule carries forward hooks (energy report, firing-rate counters):
    the fast paths bypass submodule calls, so such modules run the reference path."""
    from torch.nn.modules import module as module_mod

    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
