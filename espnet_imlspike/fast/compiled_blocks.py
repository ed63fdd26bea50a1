"""The spiking blocks as one operator under ``torch.compile`` in inference: compiled, then
replayed as CUDA graphs.

A compiled graph launches each of its kernels from the host: at AISHELL's size (32 x 1200
frames) the spiking encoder's graph launches about 300, the host takes longer to launch
them than the GPU to run them, and the compiled encoder was no faster than its kernels
allow (bench/README.md, "Issue 12, compiled-inference round"). The compiler's own CUDA
graphs (``mode="reduce-overhead"``) fail on ESPnet's encoders (their positional encoding
stores a graph output as module state), and a user's ``torch.compile(model)`` is the
default mode anyway.

So where the user compiles the encoder for inference (no gradient, evaluation mode, CUDA,
the CUDA graphs on: :func:`applies`), the compiled graph calls one opaque operator,
:func:`encoder_blocks`, for the blocks and the final LayerNorm. The operator compiles that
part of the encoder itself (the code the user's compiler would have traced, with PyTorch's
default compiler whatever backend the user chose, on first use), and replays it as CUDA
graphs with the machinery of the eager path (:mod:`.graphs`: capture, and the checks that
drop a graph whose tensors changed), one per shape with lengths rounded up to multiples of
16 frames (:func:`~.buckets.aligned_frames`: more graphs than training's coarser buckets,
less padded work; each new shape runs once before its capture, where the compiler may
compile the blocks again for it). Outputs are those of the compiled blocks at the padded
shape: the valid frames equal the unpadded computation up to the rounding of products at
another shape, as for the eager graphs. Where the graphs cannot serve (a hook on a block,
shapes beyond the buckets) the compiled blocks run without them.
``IMLSPIKE_COMPILED_GRAPHS=0`` turns the operator off (the user's compiler then traces the
blocks, as before); ``=1`` uses it on any device (without graphs off CUDA: the tests).
"""

import contextlib
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Tuple

import torch

from espnet_imlspike.errors import OptionError
from espnet_imlspike.fast import MODES, graphs_enabled
from espnet_imlspike.fast.buckets import aligned_frames
from espnet_imlspike.fast.chunked_input_layer import autocast_dtype
from espnet_imlspike.fast.graphs import EncoderGraphs

# key (the encoder's id) -> the encoder (weakly) and its graphs
_encoders: Dict[int, "weakref.ref[torch.nn.Module]"] = {}
_graphs: Dict[int, EncoderGraphs] = {}
_worker: Optional[ThreadPoolExecutor] = None  # the thread the operator's work runs on
# (key, input dtype, device type, autocast dtype) -> the dtype of the blocks' output
_output_dtypes: Dict[Tuple, torch.dtype] = {}


def _switch() -> str:
    switch = os.environ.get("IMLSPIKE_COMPILED_GRAPHS", "auto")
    if switch not in MODES:
        raise OptionError(f"IMLSPIKE_COMPILED_GRAPHS must be one of {MODES}, got {switch!r}")
    return switch


def applies(xs: torch.Tensor) -> bool:
    """Whether an encoder in evaluation mode whose blocks could be graphed runs them as
    :func:`encoder_blocks` for ``xs``: the user's compiler (dynamo) is tracing, no
    gradient, the CUDA graphs on for ``xs`` (or ``IMLSPIKE_COMPILED_GRAPHS=1``)."""
    switch = _switch()
    if switch == "0" or not torch.compiler.is_dynamo_compiling() or torch.is_grad_enabled():
        return False
    return switch == "1" or graphs_enabled(xs)


def register(encoder: torch.nn.Module) -> None:
    """Make ``encoder`` reachable by :func:`encoder_blocks` under its ``id`` (the key a
    compiled graph holds; the compiler guards on the encoder's identity). The encoders
    call this when an instance comes to be: built or copied."""
    key = id(encoder)
    _forget(key)  # a dead encoder's id, reused
    _encoders[key] = weakref.ref(encoder, lambda _, key=key: _forget(key))
    _graphs[key] = EncoderGraphs(aligned_frames, warm_every_shape=True)


def _forget(key: int) -> None:
    _encoders.pop(key, None)
    _graphs.pop(key, None)
    for entry in [k for k in _output_dtypes if k[0] == key]:
        del _output_dtypes[entry]


def _encoder(key: int) -> torch.nn.Module:
    encoder = _encoders[key]() if key in _encoders else None
    if encoder is None or id(encoder) != key:
        raise RuntimeError(f"imlspike::encoder_blocks: no live encoder was registered as "
                           f"{key} (compiled_blocks.register)")
    return encoder


def _core(encoder: torch.nn.Module, xs: torch.Tensor, olens: torch.Tensor) -> torch.Tensor:
    return encoder._graph_core(xs, olens)


# compiled on first use; the compiler guards on the encoder (one entry per encoder)
_compiled_core = torch.compile(_core)


def _autocast(device_type: str, dtype: Optional[torch.dtype]):
    # the autocast state the operator's caller was traced under
    return torch.autocast(device_type, dtype=dtype or torch.float32,
                          enabled=dtype is not None)


# cudagraph_unsafe: a caller compiled with mode="reduce-overhead" must not capture the
# operator, which replays graphs of its own from another thread
@torch.library.custom_op("imlspike::encoder_blocks", mutates_args=(),
                         tags=(torch.Tag.cudagraph_unsafe,))
def encoder_blocks(xs: torch.Tensor, olens: torch.Tensor, key: int, frame_scale: int,
                   dtype: Optional[torch.dtype]) -> torch.Tensor:
    """``encoder._graph_core(xs, olens)`` (the blocks and the final LayerNorm) of the
    encoder registered as ``key`` (:func:`register`), compiled and replayed as CUDA graphs;
    ``dtype``: the autocast dtype where the call was traced (None: off). Inference only.

    The work runs on a thread of its own: an operator runs inside the caller's compiled
    graph with its dispatch state (autocast and the functorch transforms turned off
    there), in which the compiler cannot trace the blocks (FlexAttention's block mask is
    made with ``vmap``); a new thread starts from the default state. The caller waits."""
    stream = torch.cuda.current_stream(xs.device) if xs.is_cuda else None
    return _thread().submit(_run_blocks, xs, olens, key, frame_scale, dtype, stream).result()


def _thread() -> ThreadPoolExecutor:
    global _worker
    if _worker is None:
        _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imlspike-blocks")
    return _worker


def _run_blocks(xs, olens, key, frame_scale, dtype, stream):
    encoder = _encoder(key)
    streams = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with streams, torch.no_grad(), _autocast(xs.device.type, dtype):
        out = None
        if graphs_enabled(xs):
            out = _graphs[key].run(encoder, lambda x, lengths: _compiled_core(
                encoder, x, lengths), xs, olens, frame_scale)
        if out is None:  # graphs off or refused (a hook): the compiled blocks alone
            out = _compiled_core(encoder, xs, olens)
    return out


@encoder_blocks.register_fake
def _encoder_blocks_shape(xs, olens, key, frame_scale, dtype):
    return xs.new_empty(xs.shape, dtype=output_dtype(key, xs, dtype))


def output_dtype(key: int, xs: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.dtype:
    """The dtype of the blocks' output for ``xs``'s dtype and the autocast ``dtype``:
    found by running them once on one real frame (on the operator's thread, away from the
    compiler's fake tensors; then kept), which follows every option's LayerNorm and
    autocast rules without restating them."""
    entry = (key, xs.dtype, xs.device.type, dtype)
    if entry not in _output_dtypes:
        _output_dtypes[entry] = _thread().submit(
            _probe_dtype, key, xs.dtype, xs.device, xs.size(-1), dtype).result()
    return _output_dtypes[entry]


def _probe_dtype(key, xs_dtype, device, size, dtype) -> torch.dtype:
    with torch.no_grad(), _autocast(device.type, dtype):
        one = torch.zeros(1, 1, size, dtype=xs_dtype, device=device)
        lengths = torch.ones(1, dtype=torch.long, device=device)
        return _encoder(key)._graph_core(one, lengths).dtype


def run(encoder: torch.nn.Module, xs: torch.Tensor, olens: torch.Tensor,
        frame_scale: int) -> torch.Tensor:
    """The call the encoder's forward makes where :func:`applies`."""
    return encoder_blocks(xs, olens, id(encoder), frame_scale,
                          autocast_dtype(xs.device.type))
