"""GPU checks that the fast paths equal the reference path (paper size, 12 x 256).

* fused modules, eager, vs reference: three training steps with dropout (same seeds),
  fp32 and bf16 autocast: encoder outputs, gradients, IMLS statistics;
* CUDA graphs vs the same fused modules run eagerly on the same bucket-padded input
  layer output (:class:`PaddedBlocks`; dropout off: a graph draws its dropout masks
  from offsets of its own), two steps accumulated into ``.grad``, then an eval step; and
  vs the reference on the unpadded batch (matrix products of other shapes may round
  differently);
* memory-linear attention vs the explicit map on one 1500-frame utterance;
* ESPnet's conv subsampling on the chunked path (:mod:`~espnet_imlspike.fast.subsampling`)
  vs the module itself, 20 x 1536 frames: outputs, gradients, and the peak memory of one
  forward and backward of each, fp32, bf16 autocast and float64; and the whole encoder
  (fused, eager) with it vs with the module. It equals the module to rounding only, so the
  checks above run with the module (``IMLSPIKE_CHUNKED_INPUT=0``): bit for bit there;
  the same without the Triton kernels of its first convolution; and those kernels alone
  against the PyTorch operations they replace and against float64;
* the softmax weights kernel (:mod:`~espnet_imlspike.fast.attention_kernels`) and its
  backward kernel vs the PyTorch operations they replace, bit for bit, 1 to 1024 keys,
  fp32 and bf16 autocast; the chunked attention's backward with and without it;
* ``torch.compile`` of the input layer in inference (one operator) vs the eager chunked layer
  (part ``compiled_input``, also on the CPU); of the whole encoder, its blocks as the
  operator replaying compiled CUDA graphs, vs the blocks traced and vs eager (part
  ``compiled_blocks``).

    python bench/fast_checks.py --out bench/out
"""

import argparse
import copy
import json
import os
from pathlib import Path

import torch

from common import SIZES, path_for, print_and_write

from espnet_imlspike.attention import attention_weights  # noqa: E402
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder  # noqa: E402
from espnet_imlspike.fast import fast_mode  # noqa: E402
from espnet_imlspike.fast.long_attention import (  # noqa: E402
    chunked_softmax_context,
    decayed_linear_context,
)


def steps(encoder, xs, lengths, mode, dtype, count, seed=0, zero_grad=True, graphs=True,
          region=None):
    """``count`` training steps; the loss reads outputs[:region] (a padded batch's real
    utterances and frames). Returns outputs, gradients, output lengths, buffers."""
    os.environ["IMLSPIKE_CUDA_GRAPHS"] = "1" if graphs else "0"
    outputs = []
    with fast_mode(mode):
        for step in range(count):
            torch.manual_seed(seed + step)
            with torch.autocast(xs.device.type, dtype=dtype, enabled=dtype != torch.float32):
                out, olens, _ = encoder(xs, lengths)
            if region is not None:
                out, olens = out[:region[0], :region[1]], olens[:region[0]]
            weight = torch.linspace(-1, 1, out.size(-1), device=out.device)
            (out.float() * weight).sum().backward()
            outputs.append(out.detach().float())
            if zero_grad and step < count - 1:
                encoder.zero_grad(set_to_none=True)
    grads = [p.grad.float().clone() for p in encoder.parameters()]
    encoder.zero_grad(set_to_none=True)
    return outputs, grads, olens, [b.clone() for b in encoder.buffers()]


def compare(a, b, olens):
    (out_a, grads_a, _, buffers_a), (out_b, grads_b, _, buffers_b) = a, b
    valid = torch.arange(out_a[0].size(1), device=olens.device)[None] < olens[:, None]
    diffs = [(x - y)[valid].abs() for x, y in zip(out_a, out_b)]
    scale = max(g.abs().max() for g in grads_a)
    return {
        "output_max_abs_diff": max(float(d.max()) for d in diffs),
        "output_share_differing": max(float((d > 0).float().mean()) for d in diffs),
        "grad_max_diff_over_max_grad": float(max((x - y).abs().max() for x, y in
                                                 zip(grads_a, grads_b)) / scale),
        "statistics_equal": all(torch.equal(x, y) for x, y in zip(buffers_a, buffers_b)),
    }


def batch(device, lengths=(600, 580, 560, 500, 450, 400, 350, 301)):
    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(len(lengths), max(lengths), 80, generator=generator)
    return xs.to(device), torch.tensor(lengths, device=device)


def fused_vs_reference(device, dtype, size):
    torch.manual_seed(0)
    ref = IMLSpikeformerEncoder(80, **SIZES[size]).to(device).train()
    fast = copy.deepcopy(ref)
    xs, lengths = batch(device)
    a = steps(ref, xs, lengths, "0", dtype, 3)
    b = steps(fast, xs, lengths, "1", dtype, 3, graphs=False)
    return compare(a, b, a[2])


class PaddedBlocks(torch.nn.Module):
    """What a CUDA graph computes, run eagerly: the input layer on the real batch, its
    output zero-padded to the bucket shape, then the blocks on that (same shapes)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, xs, lengths):
        from espnet_imlspike.encoders.common import SUBSAMPLING
        from espnet_imlspike.fast.buckets import bucket_batch, bucket_frames

        encoder = self.encoder
        embedded, olens, _ = encoder.embed_input(xs, lengths)
        batch = bucket_batch(xs.size(0))
        frames = bucket_frames(embedded.size(1), SUBSAMPLING.get(encoder.input_layer, 1))
        padded = embedded.new_zeros(batch, frames, embedded.size(-1))
        padded[:xs.size(0), :embedded.size(1)] = embedded
        padded_lengths = olens.new_zeros(batch)
        padded_lengths[:xs.size(0)] = olens
        out = encoder._graph_core(padded, padded_lengths)
        return out[:xs.size(0), :embedded.size(1)], olens, None


def graphs_vs_eager(device, dtype, size):
    torch.manual_seed(0)
    options = dict(SIZES[size], dropout_rate=0.0, positional_dropout_rate=0.0)
    eager = IMLSpikeformerEncoder(80, **options).to(device).train()
    graphed, reference = copy.deepcopy(eager), copy.deepcopy(eager)
    padded = PaddedBlocks(eager)
    xs, lengths = batch(device)
    results = {}
    # the first bucket warms up before its capture, the second (another shape, same
    # mode) is captured without one; then the first replays again (its static tensors,
    # shared by default, are then views of the buffers the second used)
    second = batch(device, lengths=(1000, 990, 700, 650, 300))
    for prefix, (xs_b, lengths_b) in (("", (xs, lengths)), ("second_bucket_", second),
                                      ("first_bucket_again_", (xs, lengths))):
        runs = {}
        for name, model, mode, graphs in (("eager_padded", padded, "1", False),
                                          ("graphed", graphed, "1", True),
                                          ("reference", reference, "0", False)):
            # three steps (graphs: capture and replays), then two accumulated into .grad
            steps(model, xs_b, lengths_b, mode, dtype, 3, graphs=graphs)
            runs[name] = steps(model, xs_b, lengths_b, mode, dtype, 2, zero_grad=False,
                               graphs=graphs)
        olens = runs["graphed"][2]
        results[prefix + "graphed_vs_eager_same_padded_shapes"] = compare(
            runs["eager_padded"], runs["graphed"], olens)
        results[prefix + "graphed_vs_reference_unpadded"] = compare(
            runs["reference"], runs["graphed"], olens)
    results["graphs_captured"] = len(graphed._graphs.entries)
    results["modes_warmed_up"] = len(graphed._graphs.warmed)
    for model in (eager, graphed):
        model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype,
                                         enabled=dtype != torch.float32), fast_mode("1"):
        os.environ["IMLSPIKE_CUDA_GRAPHS"] = "1"
        outs = [graphed(xs, lengths)[0].float() for _ in range(3)]  # capture, replays
        os.environ["IMLSPIKE_CUDA_GRAPHS"] = "0"
        ref_out, olens, _ = eager(xs, lengths)
        same_shape, _, _ = padded(xs, lengths)
        os.environ["IMLSPIKE_CUDA_GRAPHS"] = "1"  # a second eval bucket: no warm-up
        second_outs = [graphed(*second)[0].float() for _ in range(3)]
        os.environ["IMLSPIKE_CUDA_GRAPHS"] = "0"
        second_ref, second_olens, _ = eager(*second)
        second_same, _, _ = padded(*second)
    for prefix, out, lens, pairs in (
            ("", outs[-1], olens, (("same_padded_shapes", same_shape),
                                   ("unpadded", ref_out))),
            ("second_bucket_", second_outs[-1], second_olens,
             (("same_padded_shapes", second_same), ("unpadded", second_ref)))):
        valid = torch.arange(out.size(1), device=device)[None] < lens[:, None]
        for name, other in pairs:
            diff = (out - other.float())[valid].abs()
            results[f"{prefix}eval_graphed_vs_eager_{name}_max_abs_diff"] = float(diff.max())
            results[f"{prefix}eval_graphed_vs_eager_{name}_share_differing"] = float(
                (diff > 0).float().mean())
    results["eval_graphs_captured"] = len(graphed._graphs.entries)
    results["eval_modes_warmed_up"] = len(graphed._graphs.warmed)
    os.environ["IMLSPIKE_CUDA_GRAPHS"] = "1"
    return results


def long_attention(device):
    torch.manual_seed(0)
    n, heads, length, d = 1, 4, 1500, 64
    q, k = (torch.randn(n, heads, length, d, device=device) for _ in range(2))
    v = torch.randint(0, 7, (n, heads, length, d), device=device).float()
    valid = torch.arange(length, device=device)[None] < 1400
    results = {}
    for variant in ("softmax", "linear"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        ref = attention_weights(leaves[0] @ leaves[1].transpose(-2, -1), valid, variant,
                                1 - 2**-6, d) @ leaves[2]
        grad = torch.randn_like(ref)
        ref_grads = torch.autograd.grad((ref * grad).sum(), leaves)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        if variant == "softmax":
            out = chunked_softmax_context(*leaves, valid, 1 - 2**-6, d, chunk=256)
        else:
            out = decayed_linear_context(*leaves, valid, 1 - 2**-6)
        grads = torch.autograd.grad((out * grad).sum(), leaves)
        results[variant] = {
            "context_max_rel_diff": float((out - ref).abs().max() / ref.abs().max()),
            "grad_max_rel_diff": max(float((a - b).abs().max() / b.abs().max())
                                     for a, b in zip(grads, ref_grads)),
        }
    return results


def softmax_kernel(device):
    """Share of differing softmax values and weights, kernel vs PyTorch operations."""
    from espnet_imlspike.fast import attention_kernels
    from espnet_imlspike.fast.long_attention import _softmax_chunk

    generator = torch.Generator().manual_seed(0)
    applies = attention_kernels.applies
    results = {}
    for keys in (1, 5, 33, 149, 320, 1000, 1024):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            for decay in (1 - 2**-6, None):
                n, heads, d = 4, 4, 64
                q, k = (torch.randint(0, 7, (n, heads, keys, d), generator=generator)
                        .float().mul(torch.rand(1, generator=generator) * 0.2)
                        .to(device) for _ in range(2))
                lengths = torch.randint(1, keys + 1, (n,), generator=generator)
                lengths[0], lengths[-1] = keys, 0
                valid = (torch.arange(keys)[None] < lengths[:, None]).to(device)
                start = keys // 3
                q_c = q[:, :, start:]
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    attention_kernels.applies = lambda scores: False
                    k_t = k.transpose(-2, -1)
                    _, soft_ref, weights_ref = _softmax_chunk(q_c, k_t, start, valid, decay,
                                                              8.0)
                    attention_kernels.applies = applies
                    used = applies(q_c @ k.transpose(-2, -1))
                    _, soft, weights = _softmax_chunk(q_c, k_t, start, valid, decay, 8.0,
                                                      with_soft=True)
                weights_ref = weights_ref.to(weights.dtype)  # the product's cast
                results[f"{keys}_{name}_{'decay' if decay else 'plain'}"] = {
                    "kernel_used": bool(used),
                    "soft_share_differing": float((soft != soft_ref).float().mean()),
                    "weights_share_differing": float((weights != weights_ref).float().mean()),
                    "weights_max_abs_diff": float((weights.float() - weights_ref.float())
                                                  .abs().max()),
                }
    return results


def softmax_backward_kernel(device):
    """The fused backward of the softmax weights vs the PyTorch operations it replaces
    (share of differing gradient values), with PyTorch's ``T - P * sum`` taken as one
    fused multiply-add (the kernel's default) and rounded twice; and the chunked
    attention's whole backward (q, k, v gradients) with the kernel vs without it."""
    from espnet_imlspike.fast import attention_kernels
    from espnet_imlspike.fast.long_attention import (
        _key_padding,
        _softmax_backward,
        chunked_softmax_context,
    )

    generator = torch.Generator().manual_seed(0)
    results = {}
    for keys in (1, 5, 33, 149, 320, 1000, 1024):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            for decay in (1 - 2**-6, None):
                n, heads, start = 4, 4, keys // 3  # query rows start .. keys - 1
                scores = (torch.randn(n, heads, keys - start, keys, generator=generator)
                          * 8).to(dtype)
                lengths = torch.randint(1, keys + 1, (n,), generator=generator)
                lengths[0], lengths[-1] = keys, 0
                valid = (torch.arange(keys)[None] < lengths[:, None]).to(device)
                grad_w = torch.randn(scores.shape, generator=generator).to(dtype).to(device)
                scores, scale = scores.to(device), 8.0
                _, soft = attention_kernels.softmax_weights(scores, valid, start, decay, scale,
                                                            with_soft=True)
                cols = torch.arange(keys, device=device)
                ref = _softmax_backward(grad_w, soft, _key_padding(valid),
                                        cols[start:], cols, decay, scale, dtype)
                row = {"kernel_applies": attention_kernels.backward_applies(grad_w, soft, dtype)}
                for fma in (True, False):
                    out = attention_kernels.softmax_weights_backward(
                        grad_w, soft, valid, start, decay, scale, dtype, fma=fma)
                    row[f"{'fma' if fma else 'unfused'}_share_differing"] = float(
                        (out != ref).float().mean())
                results[f"{keys}_{name}_{'decay' if decay else 'plain'}"] = row
    applies = attention_kernels.backward_applies
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        q, k, v = (torch.randn(6, 4, 700, 64, generator=generator).to(device).requires_grad_()
                   for _ in range(3))
        lengths = torch.tensor([700, 650, 600, 500, 300, 1], device=device)
        valid = torch.arange(700, device=device)[None] < lengths[:, None]
        grad = torch.randn(6, 4, 700, 64, generator=generator).to(device)
        grads = []
        for use in (True, False):
            attention_kernels.backward_applies = applies if use else (lambda *a: False)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                out = chunked_softmax_context(q, k, v, valid, 1 - 2**-6, 64, chunk=256)
            grads.append(torch.autograd.grad(out, (q, k, v), grad.to(out.dtype)))
        attention_kernels.backward_applies = applies
        results[f"chunked_backward_{name}_share_differing"] = max(
            float((a != b).float().mean()) for a, b in zip(*grads))
    return results


def input_layer(device, dtype, size, frames=1536, batch_size=20):
    """The chunked input layer vs ESPnet's module: outputs, gradients, peak memory."""
    from espnet_imlspike.fast import subsampling

    torch.manual_seed(0)
    embed = IMLSpikeformerEncoder(80, **SIZES[size]).embed.to(device).eval()  # no dropout
    if dtype == torch.float64:
        embed = embed.double()
    generator = torch.Generator().manual_seed(1)
    xs = torch.randn(batch_size, frames, 80, generator=generator)
    xs = xs.to(device, embed.out[0].weight.dtype)
    results = {}
    for name, chunked in (("module", False), ("chunked", True)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        autocast = dtype == torch.bfloat16
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast), \
                fast_mode("1"):
            out = subsampling.subsample(embed, xs) if chunked else embed(xs, None)[0]
        weight = torch.linspace(-1, 1, out.size(-1), device=device, dtype=torch.float64)
        (out.double() * weight).sum().backward()
        torch.cuda.synchronize()
        results[name] = (out.detach(), [p.grad.clone() for p in embed.parameters()],
                         (torch.cuda.max_memory_allocated() - before) / 2**20)
        embed.zero_grad(set_to_none=True)
        del out
    (out_a, grads_a, peak_a), (out_b, grads_b, peak_b) = results["module"], results["chunked"]
    scale = max(g.abs().max() for g in grads_a)
    return {
        "output_max_diff_over_max": float((out_a - out_b).abs().max() / out_a.abs().max()),
        "output_share_differing": float((out_a != out_b).float().mean()),
        "grad_max_diff_over_max_grad": float(max((a - b).abs().max() for a, b in
                                                 zip(grads_a, grads_b)) / scale),
        "peak_allocated_mib_module": round(peak_a, 1),
        "peak_allocated_mib_chunked": round(peak_b, 1),
    }


def input_kernels_vs_pytorch(device):
    """The first convolution's kernels (:mod:`~espnet_imlspike.fast.input_kernels`) vs the
    PyTorch operations they replace on a chunk of LibriSpeech's and AISHELL's sizes: the
    map (share of differing values, largest difference in units of the dtype's last place)
    and the weight and bias gradients (largest difference over the largest value), each
    against float64 as well."""
    from espnet_imlspike.fast import input_kernels

    results = {}
    generator = torch.Generator().manual_seed(0)
    for channels, batch in ((512, 64), (256, 32)):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16),
                            ("fp16", torch.float16)):
            x = torch.randn(batch, 1, 53, 80, generator=generator).to(device, dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            weight = (torch.randn(channels, 1, 3, 3, generator=generator) / 3).to(device, dtype)
            bias = (torch.randn(channels, generator=generator) / 4).to(device, dtype)
            assert input_kernels.applies(x, weight)
            y = input_kernels.first_map(x, weight, bias, (2, 2))
            ref = torch.nn.functional.conv2d(x, weight, bias, 2).relu_()
            exact = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(),
                                               2).relu_()
            ulp = (exact.abs() * torch.finfo(dtype).eps).clamp_min(torch.finfo(dtype).tiny)
            grad = torch.randn(y.shape, generator=generator).to(device, dtype)
            grad = grad.contiguous(memory_format=torch.channels_last)
            g_weight, g_bias = input_kernels.first_map_backward(grad, y, x, weight, (2, 2))
            masked = torch.ops.aten.threshold_backward(grad, ref, 0)
            _, ref_weight, ref_bias = torch.ops.aten.convolution_backward(
                masked, x, weight, [channels], [2, 2], [0, 0], [1, 1], False, [0, 0], 1,
                [False, True, True])
            leaves = [weight.double().requires_grad_(), bias.double().requires_grad_()]
            exact_grads = torch.autograd.grad(
                torch.nn.functional.conv2d(x.double(), *leaves, 2),
                leaves, torch.where(y.double() > 0, grad.double(), 0.0))

            def diff(a, b):
                return float((a.double() - b.double()).abs().max() / b.double().abs().max())

            results[f"{channels}ch_{name}"] = {
                "map_share_differing_from_pytorch": float((y != ref).float().mean()),
                "map_max_ulps_from_pytorch": float(((y.double() - ref.double()).abs()
                                                    / ulp).max()),
                "map_max_ulps_from_float64": float(((y.double() - exact).abs() / ulp).max()),
                "pytorch_map_max_ulps_from_float64": float(((ref.double() - exact).abs()
                                                            / ulp).max()),
                "weight_grad_diff_from_pytorch": diff(g_weight, ref_weight),
                "bias_grad_diff_from_pytorch": diff(g_bias, ref_bias),
                "weight_grad_diff_from_float64": diff(g_weight, exact_grads[0]),
                "pytorch_weight_grad_diff_from_float64": diff(ref_weight, exact_grads[0]),
                "bias_grad_diff_from_float64": diff(g_bias, exact_grads[1]),
                "pytorch_bias_grad_diff_from_float64": diff(ref_bias, exact_grads[1]),
            }
    return results


def chunked_encoder(device, dtype, size):
    """The fused encoder (eager) with the chunked input layer vs with ESPnet's module."""
    torch.manual_seed(0)
    stock = IMLSpikeformerEncoder(80, **SIZES[size]).to(device).train()
    chunked = copy.deepcopy(stock)
    xs, lengths = batch(device)
    os.environ["IMLSPIKE_CHUNKED_INPUT"] = "0"
    a = steps(stock, xs, lengths, "1", dtype, 3, graphs=False)
    os.environ["IMLSPIKE_CHUNKED_INPUT"] = "1"
    b = steps(chunked, xs, lengths, "1", dtype, 3, graphs=False)
    return compare(a, b, a[2])


def compiled_input(device, size, frames=1200, batch_size=32):
    """``torch.compile`` in inference (the default compiler) of the input layer, which calls
    the chunked layer as one operator, vs the eager chunked layer, bf16 autocast and fp32:
    the operator's own output (larger chunks: cuDNN may round other shapes otherwise) and
    the whole layer's (the positional encoding after it compiled)."""
    from espnet_imlspike.encoders.common import conv_subsample
    from espnet_imlspike.fast import chunked_input_layer, subsampling

    torch.manual_seed(0)
    embed = IMLSpikeformerEncoder(80, **SIZES[size]).embed.to(device).eval()
    xs = torch.randn(batch_size, frames, 80, generator=torch.Generator().manual_seed(1))
    xs = xs.to(device)
    geometry = subsampling._Geometry.of_layers(subsampling._convolutions(embed))
    params = list(embed.parameters())  # the convolutions', then the output Linear's
    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        torch._dynamo.reset()
        compiled = torch.compile(lambda x: conv_subsample(embed, x))
        autocast = dtype != torch.float32
        with torch.no_grad(), fast_mode("1"), torch.autocast(device.type, dtype=dtype,
                                                             enabled=autocast):
            eager = subsampling.subsample(embed, xs)
            layer = compiled(xs)
            traced = torch._dynamo.explain(lambda x: conv_subsample(embed, x))(xs).graphs
            operator = subsampling.conv_subsampling(xs, params, *geometry.flat(),
                                                    dtype if autocast else None)
        with torch.no_grad():
            eager_chunks, _, _, _ = chunked_input_layer.chunked_forward(
                xs, geometry, params, dtype if autocast else None)
        results[name] = {
            "graph_calls_the_operator": any(
                node.target is torch.ops.imlspike.conv_subsampling.default
                for graph in traced for node in graph.graph.nodes),
            "operator_chunks": len(geometry.chunks(batch_size, frames, 80,
                                                   subsampling.INFERENCE_ELEMENTS_PER_CHUNK)),
            "eager_chunks": len(geometry.chunks(batch_size, frames, 80)),
            "operator_vs_eager_share_differing": float(
                (operator != eager_chunks).float().mean()),
            "operator_vs_eager_max_over_max": float(
                (operator - eager_chunks).abs().max() / eager_chunks.abs().max()),
            "compiled_vs_eager_layer_share_differing": float((layer != eager).float().mean()),
            "compiled_vs_eager_layer_max_over_max": float(
                (layer - eager).abs().max() / eager.abs().max()),
        }
    return results


def compiled_blocks(device, size, frames=1200, batch_size=32):
    """``torch.compile`` in inference of the whole encoder, its blocks as the operator that
    compiles and replays them as CUDA graphs (:mod:`~espnet_imlspike.fast.compiled_blocks`),
    vs the same compiled with the blocks traced in the graph (``IMLSPIKE_COMPILED_GRAPHS=0``,
    as before) and vs the eager encoder, fp32 and bf16 autocast, over the valid frames."""
    from espnet_imlspike.fast import compiled_blocks as operator

    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(80, **SIZES[size]).to(device)
    xs = torch.randn(batch_size, frames, 80, generator=torch.Generator().manual_seed(1))
    xs = xs.to(device)
    lengths = torch.linspace(frames // 3, frames, batch_size).long().to(device)
    with torch.no_grad():
        for _ in range(3):  # calibrate the IMLS statistics
            encoder(xs, lengths)
    encoder.eval()
    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        outputs = {}
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype,
                                             enabled=dtype != torch.float32):
            for variant, switch in (("operator", "auto"), ("traced", "0")):
                os.environ["IMLSPIKE_COMPILED_GRAPHS"] = switch
                torch._dynamo.reset()
                graphs = torch._dynamo.explain(encoder)(xs, lengths).graphs
                calls = any(node.target is torch.ops.imlspike.encoder_blocks.default
                            for graph in graphs for node in graph.graph.nodes)
                torch._dynamo.reset()
                compiled = torch.compile(encoder)
                compiled(xs, lengths)
                outputs[variant] = (compiled(xs, lengths), calls)
            os.environ.pop("IMLSPIKE_COMPILED_GRAPHS")
            eager, olens, _ = encoder(xs, lengths)
        valid = torch.arange(eager.size(1), device=device)[None] < olens[:, None]
        (op, op_calls), (traced, traced_calls) = outputs["operator"], outputs["traced"]
        op, olens_op, traced = op[0][valid].float(), op[1], traced[0][valid].float()
        eager = eager[valid].float()
        results[name] = {
            "graph_calls_the_operator": op_calls, "traced_graph_calls_it": traced_calls,
            "lengths_equal": bool(torch.equal(olens_op, olens)),
            "graphs_captured": len(operator._graphs[id(encoder)].entries),
            "operator_vs_traced_share_differing": float((op != traced).float().mean()),
            "operator_vs_traced_max_over_max": float((op - traced).abs().max()
                                                     / traced.abs().max()),
            "operator_vs_eager_share_differing": float((op != eager).float().mean()),
            "operator_vs_eager_max_over_max": float((op - eager).abs().max()
                                                    / eager.abs().max()),
            "traced_vs_eager_max_over_max": float((traced - eager).abs().max()
                                                  / eager.abs().max()),
        }
    return results


PARTS = ["fused", "graphs", "input", "input_kernels", "long", "softmax", "compiled_input",
         "compiled_blocks"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=SIZES, default="aishell")
    parser.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__,
               "shared_static": os.environ.get("IMLSPIKE_SHARED_STATIC", "1") != "0"}
    os.environ["IMLSPIKE_CHUNKED_INPUT"] = "0"  # bit-for-bit checks of the blocks' paths
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if "fused" in args.parts:
            results[f"fused_vs_reference_{name}"] = fused_vs_reference(device, dtype,
                                                                       args.size)
            print(json.dumps(results), flush=True)
        if "graphs" in args.parts:
            results[f"graphs_{name}"] = graphs_vs_eager(device, dtype, args.size)
            print(json.dumps(results), flush=True)
    if "input" in args.parts and device.type == "cuda":
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16),
                            ("fp64", torch.float64)):
            os.environ["IMLSPIKE_CHUNKED_INPUT"] = "1"
            results[f"input_layer_{name}"] = input_layer(device, dtype, args.size)
            if dtype != torch.float64:  # the same without the first layer's kernels
                with path_for("chunked@noinputkernels"):
                    results[f"input_layer_{name}_noinputkernels"] = input_layer(
                        device, dtype, args.size)
                results[f"chunked_encoder_{name}"] = chunked_encoder(device, dtype, args.size)
        print(json.dumps(results), flush=True)
    if "long" in args.parts:
        results["long_attention_fp32"] = long_attention(device)
    if "input_kernels" in args.parts and device.type == "cuda":
        results["input_kernels"] = input_kernels_vs_pytorch(device)
        print(json.dumps(results), flush=True)
    if "compiled_input" in args.parts:
        os.environ["IMLSPIKE_CHUNKED_INPUT"] = "1"
        results["compiled_input"] = compiled_input(device, args.size)
        print(json.dumps(results), flush=True)
    if "compiled_blocks" in args.parts:
        os.environ["IMLSPIKE_CHUNKED_INPUT"] = "1"
        results["compiled_blocks"] = compiled_blocks(device, args.size)
        print(json.dumps(results), flush=True)
    if "softmax" in args.parts and device.type == "cuda":
        results["softmax_kernel"] = softmax_kernel(device)
        results["softmax_backward_kernel"] = softmax_backward_kernel(device)
    print_and_write(results, args.out, "fast_checks.json")


if __name__ == "__main__":
    main()
