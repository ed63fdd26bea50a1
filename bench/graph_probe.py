"""Which parts of the encoder can be captured as a CUDA graph (diagnostic).

A failed capture leaves PyTorch's CUDA generator unusable in that process, so every case
runs in its own interpreter: ``python bench/graph_probe.py`` runs them all and prints
one line per case (PASS, or the first error).
"""

import os
import subprocess
import sys
import traceback

import torch

from common import SIZES

MODES = ["encoder_graphs_thread_local", "encoder_graphs_global", "encoder_graphs_relaxed"]
PARTS = ["linear", "embed", "block_fwd", "block_fwdbwd", "block_fwdbwd_warm", "fire_fwdbwd",
         "softmax_fwdbwd", "encoder_fwdbwd_warm"]


def capture(work, warm_stream=True, mode="thread_local"):
    stream = torch.cuda.Stream()
    if warm_stream:
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            work()
        torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph.capture_begin(capture_error_mode=mode)
        try:
            result = work()
        finally:
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    return result


def run_case(case):
    from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
    from espnet_imlspike.fast import fast_mode
    from espnet_imlspike.fast.firing import fire_linear
    from espnet_imlspike.fast.long_attention import chunked_softmax_context

    device = torch.device("cuda")
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(80, **SIZES["aishell"]).to(device).train()
    params = [p for p in encoder.parameters()]
    xs = torch.randn(8, 512, 80, device=device)
    lengths = torch.tensor([512, 500, 480, 470, 400, 350, 300, 260], device=device)
    with fast_mode("1"):
        out, _, _ = encoder(xs, lengths)  # a first eager run (the encoder's own stream)
        out.sum().backward()
    del out
    encoder.zero_grad(set_to_none=True)
    block = encoder.encoders[0]
    h = torch.randn(8, 127, 256, device=device, requires_grad=True)
    valid = torch.arange(127, device=device)[None] < (lengths[:, None] // 4)

    def fwdbwd(fn, inputs):
        def work():
            y = fn()
            return torch.autograd.grad(y.float().sum(), inputs, allow_unused=True)
        return work

    with fast_mode("1"):
        if case == "linear":
            lin = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Dropout(0.1)).cuda()
            capture(fwdbwd(lambda: lin(h), [h] + list(lin.parameters())))
        elif case == "embed":
            capture(lambda: encoder.embed(xs, None)[0], warm_stream=False)
        elif case == "block_fwd":
            capture(lambda: block(h, valid), warm_stream=False)
        elif case == "block_fwdbwd":
            capture(fwdbwd(lambda: block(h, valid), [h] + list(block.parameters())),
                    warm_stream=False)
        elif case == "block_fwdbwd_warm":
            capture(fwdbwd(lambda: block(h, valid), [h] + list(block.parameters())))
        elif case == "fire_fwdbwd":
            lin = block.self_attn.linear_q
            capture(fwdbwd(lambda: fire_linear(block.attn_input_neuron, h, valid, [lin])[0],
                           [h, lin.weight]))
        elif case == "softmax_fwdbwd":
            q = torch.randn(8, 4, 127, 64, device=device, requires_grad=True)
            capture(fwdbwd(lambda: chunked_softmax_context(q, q, q, valid, 0.98, 64), [q]))
        elif case == "encoder_fwdbwd_warm":
            capture(fwdbwd(lambda: encoder._graph_core(*encoder.embed_input(xs, lengths)[:2]),
                           params))
        elif case.startswith("encoder_graphs"):
            mode = case[len("encoder_graphs_"):] or "thread_local"
            os.environ["IMLSPIKE_CAPTURE_MODE"] = mode
            for _ in range(4):
                out, _, _ = encoder(xs, lengths)
                out.float().sum().backward()
            assert encoder._graphs.entries and not encoder._graphs.disabled, "no graph"
            out, _, _ = encoder(xs, lengths)  # replays, then a dropout draw outside
            out.float().sum().backward()
            torch.nn.functional.dropout(xs, 0.1, True).sum().item()


def main():
    if len(sys.argv) > 1:
        try:
            run_case(sys.argv[1])
            print("PASS")
        except Exception:
            print("FAIL " + traceback.format_exc(limit=3).replace("\n", " | ")[-1500:])
        return
    # the whole encoder in each capture mode, until one passes; the parts only if none
    for cases in (MODES, PARTS):
        for case in cases:
            done = subprocess.run([sys.executable, __file__, case], capture_output=True,
                                  text=True, timeout=120,
                                  env=dict(os.environ, PYTHONWARNINGS="ignore"))
            lines = [line for line in (done.stdout + done.stderr).splitlines()
                     if line.startswith(("PASS", "FAIL"))]
            result = lines[-1] if lines else (done.stdout + done.stderr)[-800:]
            print(f"{case}: {result}", flush=True)
            if cases is MODES and result == "PASS":
                return


if __name__ == "__main__":
    main()
