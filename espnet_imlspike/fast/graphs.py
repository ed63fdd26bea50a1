"""The encoder's blocks (forward and backward) replayed as CUDA graphs, one per bucket.

ESPnet's trainer runs the model eagerly, one launch at a time; a spiking encoder has
about twice the launches of a Transformer (four neuron layers per block): CPU-bound.
Here the blocks and final LayerNorm are captured once per bucket of shapes and replayed
as one graph in forward and one in backward (no compiler: a capture costs about one
eager step). The input layer runs eagerly before them: its activations and cuDNN
workspaces, the step's largest, then share the eager cache instead of every graph's pool.

* Buckets: the input layer's output is zero-padded to ``(bucket_batch(B), frames)``,
  ``frames`` = ``bucket_frames`` of its input frames, in output frames. Padding never
  changes the valid outputs (masks come from the exact lengths, IMLS maxima skip padded
  frames, padded keys get weight 0; extra utterances have length 0), up to the rounding
  of matrix products of another shape. Inputs longer than :data:`~.buckets.MAX_FRAMES`,
  larger batches than the last bucket, or more than :data:`MAX_GRAPHS` buckets, run
  eagerly (a warning says so once). Each capture is logged (INFO).
* The first call of a bucket captures, then replays, on one side stream of the encoder
  (:meth:`EncoderGraphs.run`). The first capture of each mode (dtype, training,
  autocast, ...) is preceded by a warm-up (one forward and backward whose statistics
  updates are undone, as ``torch.cuda.make_graphed_callables`` does); later buckets,
  which launch the same kernels at other shapes, capture directly, and warm up only if
  that fails. Buffers (IMLS statistics) and dropout draws advance on every replay as in
  eager execution.
* Gradients: the backward graph writes parameter gradients into one buffer shared by
  all buckets; the autograd node returns copies, so ``.grad`` accumulates normally.
* Under ``torch.distributed`` with NCCL (:mod:`.ranks` says what it changes;
  ``IMLSPIKE_DDP_GRAPHS=0`` runs the encoder eagerly there); other backends run eagerly.
* Safety: a graph is used only while no other graph's backward is pending, and while
  every parameter, buffer and positional-encoding table is the tensor it captured
  (``model.to``, dtype changes and new parameters drop all graphs). Any capture error
  turns graphs off for the encoder, which then runs eagerly.
"""

import contextlib
import logging
import os
import time
from typing import Callable, Dict, Optional

import torch

from espnet_imlspike.fast.buckets import bucket_batch, bucket_frames
from espnet_imlspike.fast.compile_ahead import compile_ahead
from espnet_imlspike.fast.graph_bucket import Entry, Replay, StaticTensors
from espnet_imlspike.fast.graph_watch import GraphWatch
from espnet_imlspike.fast.ranks import agree_across_ranks, in_process_group, parameter_aliases
from espnet_imlspike.neurons import rank_local_maxima

MAX_GRAPHS = 64


class EncoderGraphs:
    """CUDA graphs of one encoder, keyed by bucket and execution state."""

    def __init__(self, frame_buckets: Callable[[int, int], Optional[int]] = bucket_frames,
                 warm_every_shape: bool = False):
        self.frame_buckets = frame_buckets  # (frames, frame_scale) -> bucket frames
        # a compiled core may compile again at a new shape: never inside a capture
        self.warm_every_shape = warm_every_shape
        self._reset()
        self.disabled = self.warned = False
        self.watch: Optional[GraphWatch] = None
        self.stream: Optional[torch.cuda.Stream] = None

    def _reset(self):
        self.entries: Dict[tuple, Entry] = {}
        self.signature = None
        self.pool = None
        self.warmed = set()  # modes (key without the shape) warmed up on this stream
        self.pending = None
        self.grad_layout: Dict[torch.dtype, tuple] = {}
        # the buckets' static inputs and output gradients (shared unless IMLSPIKE_SHARED_STATIC=0)
        self.inputs, self.output_grads = StaticTensors(), StaticTensors()

    # graphs live on the device of one process: copies start empty
    def __deepcopy__(self, memo):
        return EncoderGraphs(self.frame_buckets, self.warm_every_shape)

    def __getstate__(self):
        return {"frame_buckets": self.frame_buckets, "warm_every_shape": self.warm_every_shape}

    def __setstate__(self, state):
        self.__init__(state.get("frame_buckets", bucket_frames),
                      state.get("warm_every_shape", False))

    def grad_views(self) -> Dict[int, torch.Tensor]:
        """Parameter id -> its slice of the shared gradient buffer."""
        return {id(p): g.view_as(p) for flat, params, sizes in self.grad_layout.values()
                for p, g in zip(params, flat.split(sizes))}

    def grad_copies(self) -> Dict[int, torch.Tensor]:
        """Parameter id -> a copy of its gradient (one copy of the whole buffer)."""
        return {id(p): g.view_as(p) for flat, params, sizes in self.grad_layout.values()
                for p, g in zip(params, flat.clone().split(sizes))}

    def run(
        self,
        module: torch.nn.Module,
        core: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        xs: torch.Tensor,
        ilens: torch.Tensor,
        frame_scale: int = 1,
    ) -> Optional[torch.Tensor]:
        """``core(xs, ilens)`` (B, T, ...) for ``xs`` (B, T, ...), through a graph where
        possible; None when the caller should run its own eager path (hooks, or graphs
        turned off). ``xs`` has ``frame_scale`` input frames per frame (a subsampling
        input layer's output): its bucket is :func:`bucket_frames` ``(T, frame_scale)``.

        Every call runs on one side stream of the encoder, eager or graphed, so the
        autograd nodes of the parameters never hold another stream (a capture whose
        backward would have to wait on another stream fails).
        """
        if self.watch is None:
            self.watch = GraphWatch(module)
        refuse = self.disabled or self.watch.hooked()
        batch, frames = xs.size(0), xs.size(1)
        eager = refuse or (self.pending is not None and self.pending() is not None)
        if module.training and in_process_group():  # the neurons all-reduce: agree
            batch, frames, eager = agree_across_ranks(xs.device, batch, frames, eager)
        if refuse:
            return None
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=xs.device)
        current = torch.cuda.current_stream(xs.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = self._run(module, core, xs, ilens, batch, frames, eager, frame_scale)
        current.wait_stream(self.stream)
        out.record_stream(current)
        return out

    def _run(self, module, core, xs, ilens, batch, frames, eager, scale):
        shape = (batch, frames)
        batch, frames = bucket_batch(batch), self.frame_buckets(frames, scale)
        if batch is None or frames is None or eager:
            if not eager:
                self._warn_eager(f"{shape[0]} x {shape[1]} frames is beyond the buckets")
            return core(xs, ilens)
        signature = self.watch.signature()
        if signature != self.signature:
            self._reset()
            self.signature = signature
        backward = torch.is_grad_enabled() and (
            xs.requires_grad or any(p.requires_grad for p in module.parameters()))
        key = (batch, frames, xs.dtype, xs.requires_grad, module.training, backward,
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= MAX_GRAPHS:
                self._warn_eager(f"{MAX_GRAPHS} buckets are captured already")
                return core(xs, ilens)
            reserved, start = torch.cuda.memory_reserved(), time.perf_counter()
            entry = self._capture_or_none(module, core, xs, ilens, batch, frames, backward,
                                          mode=key[2:])
            if entry is None:
                return core(xs, ilens)
            self.entries[key] = entry
            logging.info("spiking encoder: CUDA graph %d (%d x %d frames, backward %s) in %.2f"
                         " s; reserved %.2f -> %.2f GiB", len(self.entries), batch, frames,
                         backward, time.perf_counter() - start, reserved / 2**30,
                         torch.cuda.memory_reserved() / 2**30)
        if not backward:  # nothing requires a gradient: no autograd node
            return entry.replay(xs, ilens)
        return Replay.apply(self, entry, xs, ilens, *entry.params)

    def _warn_eager(self, why: str):
        if not self.warned:  # once: the same batches come back every epoch
            self.warned = True
            logging.warning("spiking encoder: a batch of %s; such batches run without CUDA "
                            "graphs (slower)", why)

    def _capture_or_none(self, module, core, xs, ilens, batch, frames, backward, mode):
        """A bucket's graphs. The first capture of a mode (dtype, training, autocast, ...)
        warms up first; later ones (new shapes, same kernels) only if capturing without
        fails: a warm-up's eager step beside a full cache set the peak reserved memory.
        None, and graphs off for the encoder (eager from now on), where both fail."""
        warmed = mode in self.warmed and not self.warm_every_shape
        for warm in ([False, True] if warmed else [True]):
            try:
                entry = self._capture(module, core, xs, ilens, batch, frames, backward, warm)
                self.warmed.add(mode)
                return entry
            except Exception as error:
                failure = error
        logging.warning("CUDA graphs of the spiking encoder turned off: %s", failure)
        self.disabled = True
        return None

    def _capture(self, module, core, xs, ilens, batch, frames, backward, warm) -> Entry:
        entry = Entry(batch, frames, xs, ilens, self.inputs)
        with torch.no_grad():
            entry.xs[:xs.size(0), :xs.size(1)].copy_(xs)
            entry.ilens[:xs.size(0)].copy_(ilens)
        entry.xs.requires_grad_(xs.requires_grad)
        if not module.training:  # the one host read of eval (a calibration warning)
            for m in module.modules():
                if hasattr(m, "_warn_if_uncalibrated"):
                    m._warn_if_uncalibrated()
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  enabled=torch.is_autocast_enabled("cuda"),
                                  cache_enabled=False)
        real = list(module.parameters())
        eager = getattr(module, "embed", None)  # the input layer runs before the graphs
        outside = {id(p) for p in eager.parameters()} if eager is not None else set()
        trained = [i for i, p in enumerate(real)
                   if p.requires_grad and id(p) not in outside] if backward else []
        # under a process group the capture differentiates storage-sharing aliases (.ranks)
        with (parameter_aliases(module) if in_process_group()
              else contextlib.nullcontext(real)) as leaves:
            self._capture_graphs(module, core, xs, entry, autocast, backward, warm,
                                 [real[i] for i in trained], [leaves[i] for i in trained])
        return entry

    def _capture_graphs(self, module, core, xs, entry, autocast, backward, warm, params,
                        leaves):
        targets = leaves + ([entry.xs] if xs.requires_grad else [])
        if warm:
            self._warm_up(module, core, entry, autocast, targets)
        out = self._captured(entry.forward_graph, lambda: core(entry.xs, entry.ilens),
                             autocast)
        entry.out = out.detach()
        if backward:
            entry.params = params
            if not self.grad_layout:
                self._allocate_grads(entry.params)
            views = self.grad_views()
            entry.grad_out = self.output_grads.take(entry.out.shape, entry.out.dtype,
                                                    entry.out.device)
            holder = {}

            def run_backward():
                grads = torch.autograd.grad(out, targets, entry.grad_out, allow_unused=True)
                params_grads = grads[:len(entry.params)]
                entry.has_grad = [g is not None for g in params_grads]
                used = [(views[id(p)], g) for p, g in zip(entry.params, params_grads)
                        if g is not None]
                if used:
                    torch._foreach_copy_([v for v, _ in used], [g for _, g in used])
                if xs.requires_grad:
                    holder["xs"] = grads[-1]

            entry.backward_graph = torch.cuda.CUDAGraph()
            self._captured(entry.backward_graph, run_backward, None)
            entry.grad_xs = holder.get("xs")
        out = None  # its autograd graph freed (entry.out, detached, keeps the output)
        if warm:
            torch.cuda.empty_cache()  # the warm-up's blocks, cached for the side stream only

    @staticmethod
    def _warm_up(module, core, entry, autocast, targets):
        """One forward and backward on the static tensors, as ``make_graphed_callables``
        does (lazy set-up outside the capture); the statistics it moved are restored."""
        saved = [b.detach().clone() for b in module.buffers()]

        def step():  # run twice: compile_ahead records its kernels, then the warm-up
            with autocast:
                out = core(entry.xs, entry.ilens)
            if targets:
                torch.autograd.grad(out, targets, torch.ones_like(out), allow_unused=True)
            with torch.no_grad():
                torch._foreach_copy_(list(module.buffers()), saved)

        with rank_local_maxima():  # no collective: other ranks are not warming up
            compile_ahead(step, entry.xs.device)  # a first run's kernels, in parallel
            step()
        torch.cuda.synchronize()

    def _captured(self, graph, work, autocast):
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            graph.capture_begin(pool=self.pool, capture_error_mode=os.environ.get(
                "IMLSPIKE_CAPTURE_MODE", "thread_local"))
            try:
                if autocast is None:
                    result = work()
                else:
                    with autocast:
                        result = work()
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self.stream)
        if self.pool is None:
            self.pool = graph.pool()
        return result

    def _allocate_grads(self, params):
        for dtype in {p.dtype for p in params}:
            group = [p for p in params if p.dtype == dtype]
            sizes = [p.numel() for p in group]
            flat = torch.empty(sum(sizes), dtype=dtype, device=group[0].device)
            self.grad_layout[dtype] = (flat, group, sizes)
