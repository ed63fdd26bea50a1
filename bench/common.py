"""What the encoder benchmarks share: model names, the fast-path switch per name, timing.

Model names: ``transformer`` (ESPnet's TransformerEncoder), ``no_encoder_blocks`` (the
same without blocks: its input layer and final LayerNorm), ``iml_<firing>[_linear]_t<T>``
(IML-Spikeformer; ``imls``/``multistep`` firing, ``_linear`` for HD-RepSSA_L),
``spike_driven_transformer_t6``. A suffix ``@ref`` runs the reference path (fast paths
off, as before this work); ``@nographs`` keeps the fused modules but no CUDA graphs;
``@notriton`` keeps the fused modules and graphs with PyTorch operations in place of the
Triton kernels of IMLS firing; ``@nochunk`` runs ESPnet's conv-subsampling module itself
instead of the chunked, recomputed one (``fast/subsampling.py``); ``@noahead`` compiles
the Triton kernels at launch instead of ahead, in parallel (``fast/compile_ahead.py``);
``@noinputkernels`` runs the chunked input layer's first convolution with PyTorch's
operations instead of its Triton kernels (``fast/input_kernels.py``); ``@nosharedstatic``
gives each CUDA-graph bucket its own static tensors (``fast/graph_bucket.py``);
``@recomputelast`` / ``@keeplast`` make the chunked input layer's backward recompute / keep
its last map whatever its cost (``fast/subsampling.py``); ``@nocompiledgraphs`` lets
``torch.compile`` in inference trace the blocks instead of calling the operator that
replays them as compiled CUDA graphs (``fast/compiled_blocks.py``).
"""

import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from espnet_device import in_graph_pool  # standalone there (it runs in ESPnet's processes)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {
    "aishell": dict(output_size=256, attention_heads=4, linear_units=2048, num_blocks=12),
    # conf/asr/librispeech/*_e18.yaml
    "librispeech": dict(output_size=512, attention_heads=8, linear_units=2048, num_blocks=18,
                        input_layer="conv2d6"),
    "tiny": dict(output_size=64, attention_heads=2, linear_units=128, num_blocks=2),
}


def build(name: str, size: dict, input_size: int = 80) -> torch.nn.Module:
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

    from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder, SpikeDrivenTransformerEncoder

    name = name.split("@")[0]
    if name == "transformer":
        return TransformerEncoder(input_size, **size)
    if name == "no_encoder_blocks":  # what every encoder pays besides its blocks
        return TransformerEncoder(input_size, **dict(size, num_blocks=0))
    if name == "spike_driven_transformer_t6":
        return SpikeDrivenTransformerEncoder(input_size, **size, timesteps=6)
    kind, steps = name.rsplit("_t", 1)
    options = {
        "iml_imls": dict(firing="imls"),
        "iml_multistep": dict(firing="multistep"),
        "iml_imls_linear": dict(firing="imls", attention="hd_repssa_linear"),
    }[kind]
    return IMLSpikeformerEncoder(input_size, **size, timesteps=int(steps), **options)


# a model name's suffix: the environment variable it sets, and to what
SUFFIX_ENVIRONMENT = {"nographs": ("IMLSPIKE_CUDA_GRAPHS", "0"),
                      "notriton": ("IMLSPIKE_TRITON", "0"),
                      "nochunk": ("IMLSPIKE_CHUNKED_INPUT", "0"),
                      "nocompiledgraphs": ("IMLSPIKE_COMPILED_GRAPHS", "0"),
                      "noahead": ("IMLSPIKE_COMPILE_AHEAD", "0"),
                      "noinputkernels": ("IMLSPIKE_INPUT_KERNELS", "0"),
                      "nosharedstatic": ("IMLSPIKE_SHARED_STATIC", "0"),
                      "recomputelast": ("IMLSPIKE_RECOMPUTE_LAST_MAP", "1"),
                      "keeplast": ("IMLSPIKE_RECOMPUTE_LAST_MAP", "0")}


@contextlib.contextmanager
def path_for(name: str):
    """The fast-path switch a model name asks for (see the module docstring)."""
    from espnet_imlspike.fast import fast_mode

    suffix = name.split("@")[1] if "@" in name else ""
    variable, value = SUFFIX_ENVIRONMENT.get(suffix, (None, None))
    previous = os.environ.get(variable) if variable else None
    if variable:
        os.environ[variable] = value
    try:
        with fast_mode("0" if suffix == "ref" else "auto"):
            yield
    finally:
        if variable and previous is None:
            os.environ.pop(variable, None)
        elif variable:
            os.environ[variable] = previous


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device):
    """(peak allocated, peak reserved) in GiB since the last reset (NaN on the CPU)."""
    if device.type != "cuda":
        return float("nan"), float("nan")
    return (torch.cuda.max_memory_allocated(device) / 2**30,
            torch.cuda.max_memory_reserved(device) / 2**30)


def graph_pool_bytes() -> int:
    """Bytes the CUDA-graph pools hold now."""
    return sum(s["total_size"] for s in torch.cuda.memory_snapshot() if in_graph_pool(s))


def print_and_write(results: dict, out: Optional[Path], filename: str) -> None:
    """Print ``results`` as indented JSON and write them to ``out/filename`` if given."""
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / filename).write_text(text)


def print_and_write_report(report: str, rows, out: Optional[Path], stem: str) -> None:
    """Print the Markdown ``report``; if ``out`` is given, write it to ``out/stem.md`` and
    ``rows`` as JSON to ``out/stem.json``."""
    print(report)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
        (out / f"{stem}.md").write_text(report + "\n")


def varied_batch(batch: int, frames: int, device: torch.device):
    """A fixed batch (seed 0) of random features (batch, frames, 80) and their lengths,
    75-100% of ``frames``, the first utterance the longest."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(frames * 3 // 4, frames + 1, (batch,), generator=generator)
    lengths[0] = frames
    xs = torch.randn(batch, frames, 80, generator=generator)
    return xs.to(device), lengths.to(device)


def median_seconds(fn, device: torch.device, warmup: int, repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn`` after ``warmup`` calls, each
    synchronised with the device at both ends."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        with Clock(device) as clock:
            fn()
        times.append(clock.seconds)
    return statistics.median(times)


class Clock:
    """Wall time of a region, synchronised with the device at both ends."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
