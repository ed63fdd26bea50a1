"""A first run's Triton compilation, serial (at launch) vs compiled ahead in parallel.

Each case runs in its own process with its own Triton disk cache (``TRITON_CACHE_DIR``):
``serial`` (``IMLSPIKE_COMPILE_AHEAD=0``: each kernel variant compiles when it first
launches, as before) and ``ahead`` (the default, ``fast/compile_ahead.py``), each with an
empty cache and again with the cache the first process filled (``*_cached``). A case
builds the paper-size IML encoder (T=6, dropout 0) and times its first training step
(bf16 autocast, CUDA graphs: warm-up, capture, replay) against its second. It reports
the variants compiled at launch and ahead, and a digest of the first step's outputs and
gradients, which must match between the cases (the same kernels run).

    python bench/compile_ahead_probe.py --out /tmp/res/compile_ahead
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SIZES, print_and_write  # noqa: E402
from fast_checks import batch  # noqa: E402


def child() -> dict:
    import logging

    from triton import knobs

    import espnet_imlspike.fast.graphs as graphs
    from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder

    logging.basicConfig(level=logging.INFO)
    device = torch.device("cuda")
    compiled_at_launch = []
    ahead = []
    knobs.runtime.jit_post_compile_hook = (
        lambda *, fn, is_manual_warmup, **_: None if is_manual_warmup
        else compiled_at_launch.append(fn.name))
    original = graphs.compile_ahead

    def counted(step, dev):  # the warm-up's call (graphs imported the function)
        ahead.append(original(step, dev))
        return ahead[-1]

    graphs.compile_ahead = counted

    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(80, **SIZES["aishell"], timesteps=6, dropout_rate=0.0,
                                    positional_dropout_rate=0.0,
                                    attention_dropout_rate=0.0).to(device).train()
    xs, lengths = batch(device)
    times, digests = [], []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, olens, _ = encoder(xs, lengths)
        (out.float() * torch.linspace(-1, 1, out.size(-1), device=device)).sum().backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        digest = hashlib.sha256(out.detach().float().cpu().numpy().tobytes())
        for p in encoder.parameters():
            digest.update(p.grad.float().cpu().numpy().tobytes())
        digests.append(digest.hexdigest()[:16])
        encoder.zero_grad(set_to_none=True)
    return {"first_step_s": round(times[0], 3), "second_step_s": round(times[1], 4),
            "one_time_s": round(times[0] - times[1], 3),
            "variants_compiled_at_launch": len(compiled_at_launch),
            "variants_compiled_ahead": sum(ahead), "first_step_digest": digests[0]}


def run_case(ahead: bool, cache: str) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=cache, IMLSPIKE_COMPILE_AHEAD="1" if ahead else "0")
    done = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True,
                          text=True)
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": done.stderr[-2000:]}
    result = json.loads(lines[-1])
    result["log"] = [x[:160] for x in done.stderr.splitlines()
                     if "compiled ahead" in x or "CUDA graph" in x]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child()))
        return
    results = {"device": torch.cuda.get_device_name(), "cpus": len(os.sched_getaffinity(0))}
    for name, ahead in (("serial", False), ("ahead", True)):
        with tempfile.TemporaryDirectory() as cache:
            results[name] = run_case(ahead, cache)
            results[name + "_cached"] = run_case(ahead, cache)
    digests = {results[k].get("first_step_digest") for k in results if isinstance(results[k], dict)}
    results["first_steps_identical"] = len(digests) == 1
    print_and_write(results, args.out, "compile_ahead_probe.json")


if __name__ == "__main__":
    main()
