"""Do the encoder's CUDA graphs capture under NCCL (diagnostic, 2 GPUs)?

Each case spawns two ranks (NCCL) in fresh interpreters, builds a small IML-Spikeformer
encoder on each GPU (optionally wrapped in DistributedDataParallel, as ESPnet does), runs
a few training steps through the graph path and reports whether the graphs were captured
and used, whether both ranks hold the same IMLS statistics, and the first error.

    python bench/distributed/graph_probe.py [--cases ...]

A case is ``name:ENV=value,ENV=value`` (environment of both ranks). Every case sets
``IMLSPIKE_DDP_GRAPHS=1`` (the default since it passed; ``fast/ranks.py``).
"""

import argparse
import json
import os
import socket
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_CASES = [
    # ESPnet's settings (NCCL_BLOCKING_WAIT=1, DDP), then without DDP, then with the
    # host wait of the all-reduce (IMLSPIKE_NCCL_STREAM_WAIT=0)
    "ddp:NCCL_BLOCKING_WAIT=1,DDP=1",
    "plain:NCCL_BLOCKING_WAIT=1,DDP=0",
    "ddp_hostwait:NCCL_BLOCKING_WAIT=1,DDP=1,IMLSPIKE_NCCL_STREAM_WAIT=0",
]


def worker(rank, port, env, results):
    os.environ.update(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      IMLSPIKE_DDP_GRAPHS="1")
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=2)
    outcome = {"graphs_used": False}
    try:
        from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder

        torch.manual_seed(0)
        encoder = IMLSpikeformerEncoder(80, output_size=256, attention_heads=4,
                                        linear_units=1024, num_blocks=2, timesteps=6).cuda()
        model = encoder
        if env.get("DDP") == "1":
            model = torch.nn.parallel.DistributedDataParallel(encoder, device_ids=[rank])
        optimiser = torch.optim.Adam(model.parameters(), 1e-4)
        generator = torch.Generator(device="cuda").manual_seed(rank)
        for step in range(4):
            frames = 300 + 40 * rank + 7 * step  # ranks differ in length and batch
            batch = 6 + rank
            feats = torch.randn(batch, frames, 80, device="cuda", generator=generator)
            lens = torch.full((batch,), frames, device="cuda")
            out, _, _ = model(feats, lens)
            out.square().mean().backward()
            optimiser.step()
            optimiser.zero_grad()
        torch.cuda.synchronize()
        graphs = encoder._graphs
        outcome["graphs_used"] = bool(graphs.entries) and not graphs.disabled
        outcome["stats"] = {k: v.cpu() for k, v in encoder.state_dict().items()
                            if k.endswith("running_max")}
    except Exception:
        outcome["error"] = traceback.format_exc()[-1500:]
    results[rank] = outcome
    dist.destroy_process_group()


def run_case(case):
    name, _, settings = case.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    context = mp.spawn(worker, args=(port, env, results), nprocs=2, join=False)
    if not context.join(timeout=120):
        for process in context.processes:
            process.kill()
    out = {"case": name, **{f"rank{r}": {k: v for k, v in results.get(r, {}).items()
                                          if k != "stats"} for r in (0, 1)}}
    if 0 in results and 1 in results and "stats" in results[0] and "stats" in results[1]:
        out["stats_equal"] = all(torch.equal(results[0]["stats"][k], results[1]["stats"][k])
                                 for k in results[0]["stats"])
    print(json.dumps(out), flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    args = parser.parse_args()
    for case in args.cases:
        try:
            run_case(case)
        except Exception:
            print(json.dumps({"case": case, "error": traceback.format_exc()[-800:]}), flush=True)


if __name__ == "__main__":
    main()
