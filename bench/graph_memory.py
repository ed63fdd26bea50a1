"""Where the memory of one encoder training step goes, eager and under CUDA graphs.

For one batch shape (``--batch`` x ``--frames``, lengths 85-100% of the longest): a
training step of the IML-Spikeformer encoder (forward, loss, backward) eagerly
(``IMLSPIKE_CUDA_GRAPHS=0``) and through the CUDA graphs (warm-up and capture), each with
the allocator's history recorded. Reported per case: the peak of live allocations during
the step above what lived before it, the reserved growth, the graph pool's size, and the
allocations alive at that peak grouped by the source line that made them (first frame in
this project, ESPnet or ``torch.nn``).

    python bench/graph_memory.py --out bench/out --batch 20 --frames 1536
"""

import argparse
import collections
import json
import os
from pathlib import Path

import torch

from common import SIZES, build, graph_pool_bytes

OWN = ("espnet_imlspike/", "espnet2/", "espnet/", "torch/nn/", "bench/")


def _site(frames):
    for frame in frames:
        name = frame.get("filename", "")
        if any(part in name for part in OWN):
            return f"{name.split('site-packages/')[-1]}:{frame.get('line')} {frame.get('name')}"
    return "(no own frame)"


MARK_BYTES = 12345 * 512  # an allocation of this size marks the end of the warm-up


def _mark_after_warm_up():
    from espnet_imlspike.fast.graphs import EncoderGraphs

    warm_up = EncoderGraphs._warm_up

    def marked(*args):
        warm_up(*args)
        torch.empty(MARK_BYTES, dtype=torch.uint8, device="cuda")  # freed at once

    EncoderGraphs._warm_up = staticmethod(marked)


def after_warm_up(trace):
    """The events after the last warm-up mark (the capture), or all without a mark."""
    marks = [i for i, e in enumerate(trace) if e["action"] == "alloc"
             and e["size"] == MARK_BYTES]
    return trace[marks[-1] + 1:] if marks else trace


def live_peak(trace, top, free_action="free_requested"):
    """Peak of live bytes over the trace (from its start, or from the last warm-up mark:
    the capture only) and what lived then."""
    trace = after_warm_up(trace)
    live, current, peak, at_peak = {}, 0, 0, {}
    for event in trace:
        action, addr, size = event["action"], event["addr"], event["size"]
        if action == "alloc":
            live[addr] = (size, event.get("frames", []))
            current += size
            if current > peak:
                peak, at_peak = current, dict(live)
        elif action == free_action and addr in live:
            current -= live.pop(addr)[0]
    sites = collections.Counter()
    for size, frames in at_peak.values():
        sites[_site(frames)] += size
    return peak, [(site, size / 2**20) for site, size in sites.most_common(top)]


def step_memory(graphs: bool, batch: int, frames: int, dtype, top: int):
    os.environ["IMLSPIKE_CUDA_GRAPHS"] = "1" if graphs else "0"
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build("iml_imls_t6", SIZES["aishell"]).to(device).train()
    lengths = torch.randint(int(0.85 * frames), frames + 1, (batch,))
    lengths[0] = frames
    xs = torch.randn(batch, frames, 80, device=device)
    lengths = lengths.sort(descending=True).values.to(device)

    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out, _, _ = model(xs, lengths)
            loss = out.float().pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    if not graphs:
        step()  # lazy set-up of the libraries outside the recorded step
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    reserved = torch.cuda.memory_reserved()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    step()
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    if os.environ.get("GRAPH_MEMORY_EVENTS"):
        big_events(trace)
    peak, sites = live_peak(trace, top)
    completed, _ = live_peak(trace, 0, "free_completed")
    segments = [e["size"] for e in trace if e["action"] == "segment_alloc"]
    actions = collections.Counter(e["action"] for e in trace)
    row = {"graphs": graphs, "batch": batch, "frames": frames, "dtype": str(dtype)[6:],
           "step_live_peak_gib": peak / 2**30,
           "live_peak_until_free_completed_gib": completed / 2**30,
           "segments_allocated_mib": [round(b / 2**20, 1) for b in segments],
           "trace_actions": dict(actions),
           "reserved_growth_gib": (torch.cuda.memory_reserved() - reserved) / 2**30,
           "graph_pool_gib": graph_pool_bytes() / 2**30,
           "top_sites_mib": sites}
    torch.cuda.empty_cache()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--frames", type=int, default=1536)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    _mark_after_warm_up()
    rows = []
    for graphs in (False, True):
        row = step_memory(graphs, args.batch, args.frames, getattr(torch, args.dtype), args.top)
        rows.append(row)
        print(f"## graphs={graphs}: live peak {row['step_live_peak_gib']:.2f} GiB, reserved "
              f"+{row['reserved_growth_gib']:.2f} GiB, graph pool {row['graph_pool_gib']:.2f} "
              f"GiB; until frees complete {row['live_peak_until_free_completed_gib']:.2f} GiB;"
              f" segments {row['segments_allocated_mib']}; {row['trace_actions']}", flush=True)
        for site, mib in row["top_sites_mib"]:
            print(f"{mib:9.1f} MiB  {site}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "graph_memory.json").write_text(json.dumps(rows, indent=1))



def big_events(trace, threshold=20 * 2**20):
    """The large allocations, frees and new segments after the last warm-up mark."""
    trace = after_warm_up(trace)
    names = {}
    for i, e in enumerate(trace):
        if e["size"] >= threshold and e["action"] in ("alloc", "free_requested",
                                                      "free_completed", "segment_alloc"):
            if e["action"] == "alloc":
                names[e["addr"]] = _site(e.get("frames", []))
            print(i, e["action"], round(e["size"] / 2**20, 1), hex(e["addr"]), e.get("stream"),
                  names.get(e["addr"], ""))


if __name__ == "__main__":
    main()
