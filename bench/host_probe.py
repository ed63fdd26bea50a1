"""Where the host time of a compiled spiking encoder's call goes (cProfile of 50 calls)."""
import cProfile
import pstats
import sys
import time

import torch

from common import SIZES, build, path_for, synchronize, varied_batch

name = sys.argv[1]
device = torch.device("cuda")
xs, lengths = varied_batch(32, 1200, device)
with path_for(name):
    torch.manual_seed(0)
    model = build(name, SIZES["aishell"]).to(device).train()
    with torch.no_grad():
        for _ in range(3):
            model(xs, lengths)
    model.eval()
    forward = torch.compile(model)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(5):
            forward(xs, lengths)
        synchronize(device)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for _ in range(50):
            forward(xs, lengths)
        profiler.disable()
        host = (time.perf_counter() - start) / 50
        synchronize(device)
        wall = (time.perf_counter() - start) / 50
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                forward(xs, lengths)
            synchronize(device)
print(f"{name}: host {host * 1e3:.2f} ms per call under cProfile, wall {wall * 1e3:.2f} ms")
pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
