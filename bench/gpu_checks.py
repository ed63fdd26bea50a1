"""GPU correctness checks of the spiking encoders (run on a CUDA machine).

* bf16 / fp16 autocast training step: finite loss and gradients.
* torch.compile: number of graph breaks of the training-form forward, and compiled eval
  output against eager (spike counts can flip where a potential sits within rounding of a
  threshold, so the fraction of differing outputs is reported, not hidden).
* Deploy form on GPU equals the training form's eval output.

    python bench/gpu_checks.py --out bench/out
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from espnet_imlspike.deploy.convert import convert_encoder  # noqa: E402
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder  # noqa: E402

SIZE = dict(output_size=256, attention_heads=4, linear_units=2048, num_blocks=12)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip_compile", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    torch.manual_seed(0)
    xs = torch.randn(8, 600, 80, device=device)
    lengths = torch.tensor([600, 580, 560, 500, 450, 400, 350, 300], device=device)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for attention in ("hd_repssa_softmax", "hd_repssa_linear"):
        for dtype in (torch.bfloat16, torch.float16):
            model = IMLSpikeformerEncoder(80, **SIZE, attention=attention).to(device).train()
            with torch.autocast("cuda", dtype=dtype):
                out, _, _ = model(xs, lengths)
            out.float().pow(2).mean().backward()
            finite = bool(torch.isfinite(out).all()) and all(
                bool(torch.isfinite(p.grad).all()) for p in model.parameters())
            results[f"{attention}_{str(dtype)[6:]}_finite"] = finite
    # Deploy vs training form in float64: rounding can no longer flip spike counts.
    model64 = IMLSpikeformerEncoder(80, **SIZE).to(device).double().train()
    with torch.no_grad():
        for _ in range(3):
            model64(xs.double(), lengths)
        model64.eval()
        eager64, olens64, _ = model64(xs.double(), lengths)
        valid64 = torch.arange(eager64.size(1), device=device)[None] < olens64[:, None]
        for execution in ("spike_train", "multi_level"):
            deployed64, _, _ = convert_encoder(model64, execution)(xs.double(), lengths)
            results[f"deploy_float64_{execution}_max_abs_diff"] = float(
                (eager64 - deployed64)[valid64].abs().max())
    if args.skip_compile:
        print(json.dumps(results, indent=2))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu_checks.json").write_text(json.dumps(results, indent=2))
        return
    model = IMLSpikeformerEncoder(80, **SIZE).to(device).train()
    explanation = torch._dynamo.explain(model)(xs, lengths)
    results["compile_graph_breaks"] = explanation.graph_break_count
    results["compile_break_reasons"] = [str(b.reason)[:200] for b in explanation.break_reasons][:5]
    model.train()
    for _ in range(3):
        model(xs, lengths)
    model.eval()
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        eager, olens, _ = model(xs, lengths)
        fast, _, _ = compiled(xs, lengths)
        valid = torch.arange(eager.size(1), device=device)[None] < olens[:, None]
        diff = (eager - fast)[valid].abs()
        results["compile_eval_max_abs_diff"] = float(diff.max())
        results["compile_eval_frac_diff_gt_1e-4"] = float((diff > 1e-4).float().mean())
        deploy = convert_encoder(model)
        deployed, _, _ = deploy(xs, lengths)
        ddiff = (eager - deployed)[valid].abs()
        results["deploy_max_abs_diff"] = float(ddiff.max())
        results["deploy_allclose_rtol1e-5"] = bool(torch.allclose(
            deployed[valid], eager[valid], rtol=1e-5, atol=1e-5))
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_checks.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
