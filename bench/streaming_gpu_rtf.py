"""GPU real-time factor of streaming encoding at paper size (encoder only, batch 1).

The streaming IML-Spikeformer (``iml_spikeformer_streaming``, AISHELL size 12x256, T=6,
causal HD-RepSSA_S, no left-context limit) with thresholds calibrated by three training
batches, then in eval, no grad, one stream: the whole utterance at once (causal model),
and chunk by chunk through ESPnet's streaming contract (``infer_mode=True``) for each
chunk size, synchronising the GPU after every chunk (a streaming server needs each
chunk's frames before the next arrives). Beside it: ESPnet's Transformer encoder and the
full-attention IML-Spikeformer on the whole utterance, and the streaming deploy form
(binary spike trains, and multi-level execution) chunk by chunk. RTF = encoder compute /
audio duration (median of ``--repeat`` passes after one warm-up); "per chunk" = mean
compute per chunk (what a chunk waits for its frames). Also compares on the GPU the
chunked output with the whole-utterance causal output (largest difference, and the share
of outputs more than 1e-4 apart: in fp32 a spike count at a threshold edge can flip when
the matrix products round differently).

    python bench/streaming_gpu_rtf.py --out DIR [--device cuda] [--seconds 10]
"""

import argparse
import json
from pathlib import Path

import torch

from common import SIZES, build, device_name, median_seconds, synchronize

CHUNKS_MS = (160, 320, 640, 1000)


def calibrate(encoder, device, generator):
    """Three training batches of random features (in the encoder's dtype), then eval."""
    dtype = next(encoder.parameters()).dtype
    encoder.train()
    with torch.no_grad():
        for _ in range(3):
            feats = torch.randn(4, 600, 80, device=device, dtype=dtype, generator=generator)
            encoder(feats, torch.tensor([600, 550, 500, 450], device=device))
    return encoder.eval()


def stream(encoder, feats, chunk, device):
    """Encode ``feats`` chunk by chunk; the GPU is synchronised after each chunk."""
    state, outputs = None, []
    for start in range(0, feats.size(1), chunk):
        piece = feats[:, start:start + chunk]
        final = start + chunk >= feats.size(1)
        lengths = torch.full((1,), piece.size(1), device=device)
        out, _, state = encoder(piece, lengths, state, is_final=final, infer_mode=True)
        synchronize(device)
        outputs.append(out)
    return torch.cat(outputs, dim=1)


def float64_check(causal, device, generator, args):
    """Chunked vs whole causal outputs in float64 (no rounding-edge spike flips)."""
    calibrate(causal, device, generator)
    frames = int(args.seconds * 100)
    feats = torch.randn(1, frames, 80, device=device, dtype=torch.float64,
                        generator=generator)
    with torch.no_grad():
        whole = causal(feats, torch.tensor([frames], device=device))[0]
        diffs = {ms: float((stream(causal, feats, ms // 10, device) - whole).abs().max())
                 for ms in CHUNKS_MS}
    result = {"device": device_name(device), "dtype": "float64", "seconds": args.seconds,
              "chunked_vs_whole_max_abs_diff": diffs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming_float64_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--float64_check", action="store_true",
                        help="only compare chunked and whole outputs, in float64")
    args = parser.parse_args(argv)
    from espnet_imlspike.streaming.deploy import convert_streaming_encoder
    from espnet_imlspike.streaming.encoder import IMLSpikeformerStreamingEncoder

    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    size = SIZES["aishell"]
    causal = IMLSpikeformerStreamingEncoder(80, **size, timesteps=6).to(device)
    if args.float64_check:
        return float64_check(causal.double(), device, generator, args)
    causal = calibrate(causal, device, generator)
    full = calibrate(build("iml_imls_t6", size).to(device), device, generator)
    transformer = build("transformer", size).to(device).eval()
    frames = int(args.seconds * 100)  # 10 ms frame shift
    feats = torch.randn(1, frames, 80, device=device, generator=generator)
    ilens = torch.tensor([frames], device=device)
    rows = []

    def add(form, chunk_ms, seconds, chunks=1):
        rows.append({"form": form, "chunk_ms": chunk_ms, "rtf": seconds / args.seconds,
                     "per_chunk_ms": 1000 * seconds / chunks})
        print(json.dumps(rows[-1]), flush=True)

    with torch.no_grad():
        add("ESPnet Transformer, whole utterance", None,
            median_seconds(lambda: transformer(feats, ilens), device, 1, args.repeat))
        add("IML-Spikeformer full attention, whole utterance", None,
            median_seconds(lambda: full(feats, ilens), device, 1, args.repeat))
        add("streaming (causal), whole utterance", None,
            median_seconds(lambda: causal(feats, ilens), device, 1, args.repeat))
        whole = causal(feats, ilens)[0]
        checks = {}
        for chunk_ms in CHUNKS_MS:
            chunk = chunk_ms // 10
            count = -(-frames // chunk)
            add("streaming, chunk by chunk", chunk_ms,
                median_seconds(lambda: stream(causal, feats, chunk, device), device, 1,
                               args.repeat), count)
            diff = (stream(causal, feats, chunk, device) - whole).abs()
            checks[chunk_ms] = {"max_abs_diff": float(diff.max()),
                                "outputs_off_by_1e-4": float((diff > 1e-4).float().mean())}
        for execution in ("spike_train", "multi_level"):
            deploy = convert_streaming_encoder(causal, execution=execution).eval()
            add(f"streaming deploy form ({execution}), chunk by chunk", 320,
                median_seconds(lambda: stream(deploy, feats, 32, device), device, 1, args.repeat),
                -(-frames // 32))
    result = {"device": device_name(device), "torch": torch.__version__,
              "seconds": args.seconds, "rows": rows,
              "chunked_vs_whole_max_abs_diff": checks}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming_gpu_rtf.json").write_text(json.dumps(result, indent=1))
    lines = [f"Device: {result['device']}, torch {torch.__version__}, fp32, batch 1, "
             f"{args.seconds:g} s of audio", "",
             "| form | chunk | RTF | compute per chunk (ms) |", "|---|---|---|---|"]
    for row in rows:
        chunk = f"{row['chunk_ms']} ms" if row["chunk_ms"] else "whole"
        lines.append(f"| {row['form']} | {chunk} | {row['rtf']:.4f} | "
                     f"{row['per_chunk_ms']:.1f} |")
    lines += ["", f"chunked vs whole causal output: {checks}"]
    (args.out / "streaming_gpu_rtf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
