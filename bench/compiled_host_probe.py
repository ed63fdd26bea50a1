"""Where the host time of a compiled spiking encoder's inference call goes (AISHELL size,
32 x 1200, bf16 autocast; wall clock around the package's functions, no profiler): when
each part starts after the call starts and how long it takes (medians of 100 calls), and the
round trip of an empty job to the compiled-blocks operator's thread.

    PYTHONPATH=. python bench/compiled_host_probe.py
"""
import statistics
import sys
import time

import torch

sys.path.insert(0, "bench")
from common import SIZES, build, synchronize, varied_batch  # noqa: E402

from espnet_imlspike.fast import (  # noqa: E402
    chunked_input_layer,
    compiled_blocks,
    graph_bucket,
    graph_watch,
    graphs,
    input_kernels,
    subsampling,
)

marks = {}
start = [0.0]


def timed(owner, attr, label):
    fn = getattr(owner, attr)

    def wrapper(*a, **k):
        t = time.perf_counter()
        marks.setdefault(label + " starts after call start", []).append(t - start[0])
        try:
            return fn(*a, **k)
        finally:
            marks.setdefault(label, []).append(time.perf_counter() - t)
    setattr(owner, attr, wrapper)


device = torch.device("cuda")
xs, lengths = varied_batch(32, 1200, device)
torch.manual_seed(0)
model = build("iml_imls_t6", SIZES["aishell"]).to(device).train()
with torch.no_grad():
    for _ in range(3):
        model(xs, lengths)
model.eval()
forward = torch.compile(model)
with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
    for _ in range(5):
        forward(xs, lengths)
    synchronize(device)
    timed(compiled_blocks, "_run_blocks", "worker _run_blocks")
    timed(graphs.EncoderGraphs, "run", "EncoderGraphs.run")
    timed(graph_watch.GraphWatch, "signature", "signature")
    timed(graph_watch.GraphWatch, "hooked", "hooked")
    timed(graph_bucket.Replay, "apply", "Replay.apply")
    timed(subsampling, "chunked_forward", "chunked_forward (input op body)")
    for name in ("_weights", "_frequency_major", "_maps", "_padded", "_rows"):
        timed(chunked_input_layer, name, f"  {name}")
    timed(subsampling._Geometry, "chunks", "  geometry.chunks")
    timed(input_kernels, "applies", "  input_kernels.applies")
    timed(input_kernels, "first_map", "  input_kernels.first_map")

    calls, hosts, walls = [], [], []
    for _ in range(100):
        synchronize(device)
        t = time.perf_counter()
        start[0] = t
        forward(xs, lengths)
        h = time.perf_counter()
        synchronize(device)
        hosts.append(h - t); walls.append(time.perf_counter() - t)
print(f"call: host {statistics.median(hosts) * 1e3:.3f} ms, "
      f"wall {statistics.median(walls) * 1e3:.3f} ms")
for k, v in marks.items():
    print(f"{k}: median {statistics.median(v)*1e3:.3f} ms over {len(v)}")
# the submit/result round trip of an empty job
ts = []
for _ in range(200):
    t = time.perf_counter()
    compiled_blocks._thread().submit(lambda: None).result()
    ts.append(time.perf_counter() - t)
print(f"empty thread round trip: {statistics.median(ts)*1e6:.1f} us")
