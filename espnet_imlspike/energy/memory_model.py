"""A second energy model beside Eq. 16-17: arithmetic, addressing and memory accesses.

After Lemaire et al., "An analytical estimation of spiking neural networks energy
efficiency" (arXiv 2210.13107), as SpikingJelly 2.0's ``estimate_lemaire_energy``
counts it (read to learn the counting; this is our own code). Per synaptic layer and
utterance, with ``E`` input events, fan-out ``F``, ``L`` frames:

* spike-fed layer: ``E F`` accumulates (+ ``L x bias`` bias additions), ``E F`` address
  additions (one per synapse reached), reads of the ``E`` input events from a FIFO of
  ``fifo_words``, of ``E F`` weights (+ biases) from a buffer of the weights' size, and a
  read and a write of ``E F`` membrane potentials from a buffer of the outputs' size;
* layer with real-valued input (the conv front, every ANN layer): ``FLOPs`` MACs
  (multiply + add), ``inputs + outputs`` address additions, input reads (a convolution
  re-reads its input once per tap), ``FLOPs`` weight reads, output writes;
* neuron layer of C channels: spike-train execution runs T steps of the IF neuron that
  MLS/IMLS simulate (Eq. 7): a read and a write of every membrane potential per step,
  the reset (one addition) per spike, a spike message written per spike, and for IMLS a
  read of the channel's threshold statistic ``Lambda~`` per step (frozen at inference,
  Eq. 11: no writes); a multi-step LIF neuron adds a leak multiplication per step.

Energies: Horowitz (ISSCC 2014, 45 nm): 32-bit add 0.1 pJ, multiply 3.1 pJ; SRAM 2.5 /
5 / 25 pJ per byte at 8 KiB / 32 KiB / 1 MiB, interpolated linearly in the buffer size
(from 0 at 0 bytes, flat beyond 1 MiB), 4-byte words, as SpikingJelly reads them.

**A multi-level spike** ``s in {0..T}`` is counted in two ways. ``spike_train``: binary
expansion into ``s`` events (what Eq. 9 runs and Eq. 17 counts: ``s`` ACs, and each
event re-reads its weights and membranes). ``multi_level``: the layer's
``ceil(log2(T+1))``-bit quantised twin (Yan et al., arXiv 2409.08290): one event per
non-zero spike count, each synapse it reaches a multiply-accumulate (priced as 32-bit,
an upper bound) with one weight and one membrane read/write, and a neuron that
quantises its accumulated input once (one multiply, one membrane read, a threshold read
for IMLS, a message per non-zero output). Both use the data set's firing statistics
(spikes and non-zero outputs per neuron layer), as Eq. 17 does.
"""

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from espnet_imlspike.energy.ops import LayerCost, LayerShape
from espnet_imlspike.errors import OptionError

SEMANTICS = ("ann", "spike_train", "multi_level")
PARTS = ("ops", "addressing", "weights", "membrane", "threshold", "in_out")


@dataclass(frozen=True)
class AccessCosts:
    """Per-operation and per-byte energies (pJ); every field is configurable."""

    e_add_pj: float = 0.1
    e_mul_pj: float = 3.1
    sram_pj_per_byte: Tuple[Tuple[float, float], ...] = (
        (8 * 1024, 2.5), (32 * 1024, 5.0), (1024 * 1024, 25.0))
    word_bytes: int = 4
    fifo_words: int = 1000

    def __post_init__(self):
        sizes = [size for size, _ in self.sram_pj_per_byte]
        if min(self.e_add_pj, self.e_mul_pj, self.word_bytes, self.fifo_words) < 0 or (
                sizes != sorted(sizes) or not sizes or sizes[0] <= 0):
            raise OptionError("access costs must be non-negative and SRAM sizes increasing")

    def per_byte(self, capacity_bytes: float) -> float:
        """pJ per byte of a buffer of ``capacity_bytes``: linear between the points."""
        points = ((0.0, 0.0),) + tuple(self.sram_pj_per_byte)
        capacity = min(max(capacity_bytes, 0.0), points[-1][0])
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            if capacity <= x1:
                return y0 + (y1 - y0) * (capacity - x0) / (x1 - x0)
        return points[-1][1]


class Tally:
    """Counts of one utterance: additions, multiplications, address additions and
    word accesses per (part, buffer size in words)."""

    def __init__(self):
        self.adds = 0.0
        self.muls = 0.0
        self.address = 0.0
        self.accesses: Dict[Tuple[str, int], float] = defaultdict(float)

    def access(self, part: str, words: float, capacity_words: int) -> None:
        self.accesses[(part, int(capacity_words))] += words

    def energy_pj(self, costs: AccessCosts) -> Dict[str, float]:
        out = dict.fromkeys(PARTS, 0.0)
        out["ops"] = self.adds * costs.e_add_pj + self.muls * costs.e_mul_pj
        out["addressing"] = self.address * costs.e_add_pj
        for (part, capacity), words in self.accesses.items():
            nbytes = words * costs.word_bytes
            out[part] += nbytes * costs.per_byte(capacity * costs.word_bytes)
        return out


def dense_layer(t: Tally, flops: float, s: LayerShape) -> None:
    """A layer with real-valued input: every operation a MAC."""
    t.muls += flops
    t.adds += flops + s.frames * s.bias
    t.address += s.input_words + s.output_words
    reads = s.dense_input_reads if s.dense_input_reads is not None else s.input_words
    t.access("in_out", reads, s.input_words)
    t.access("weights", flops + s.frames * s.bias, s.operand_words + s.bias)
    t.access("in_out", s.output_words, s.output_words)


def event_layer(t: Tally, events: float, s: LayerShape, fifo: int, multiply: bool) -> None:
    """A layer driven by ``events`` input events (binary spikes or non-zero counts)."""
    synops = events * (s.fan_out + s.event_extra)
    t.adds += synops + s.frames * s.bias
    if multiply:
        t.muls += synops
    t.address += synops
    t.access("in_out", events, fifo)
    t.access("weights", synops + s.frames * s.bias, s.operand_words + s.bias)
    t.access("membrane", 2 * events * s.fan_out, s.output_words)


def neuron_layer(t: Tally, stats: Dict, frames: int, semantics: str, fifo: int) -> None:
    """One neuron layer over ``frames`` valid frames, from its data-set statistics."""
    channels, steps = stats["channels"], stats["timesteps"]
    cells = frames * channels
    if semantics == "multi_level":
        t.muls += cells
        t.access("membrane", cells, cells)
        if stats["adaptive"]:
            t.access("threshold", cells, channels)
        t.access("in_out", stats["nonzero_fraction"] * cells, fifo)
        return
    spikes = steps * stats["rate"] * cells
    t.adds += spikes  # the reset subtraction
    t.access("membrane", 2 * steps * cells, cells)
    if stats["adaptive"]:
        t.access("threshold", steps * cells, channels)
    if stats.get("leak", 1.0) < 1.0:
        t.muls += steps * cells
    t.access("in_out", spikes, fifo)


def utterance_tally(costs: Sequence[LayerCost], neurons: Dict[str, Dict], semantics: str,
                    fifo: int) -> Tally:
    """The counts of one utterance's layers (``costs``) under ``semantics``."""
    if semantics not in SEMANTICS:
        raise OptionError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    t = Tally()
    frames = None
    for cost in costs:
        s = cost.shape
        if cost.source is None or semantics == "ann":
            dense_layer(t, cost.flops, s)
            continue
        stats = neurons[cost.source]
        if semantics == "multi_level":
            events = stats["nonzero_fraction"] * s.frames * s.fan_in
        else:
            events = stats["timesteps"] * stats["rate"] * s.frames * s.fan_in
        event_layer(t, events, s, fifo, multiply=semantics == "multi_level")
        frames = s.frames
    if semantics != "ann" and frames is not None:
        for stats in neurons.values():
            neuron_layer(t, stats, frames, semantics, fifo)
    return t


def priceable(costs: Sequence[LayerCost]) -> bool:
    return all(c.shape is not None for c in costs)


def memory_energy(utterance_costs: Sequence[Sequence[LayerCost]], neurons: Dict[str, Dict],
                  semantics: str, costs: AccessCosts = AccessCosts(),
                  seconds: Optional[Sequence[float]] = None) -> Dict:
    """Mean energy per utterance (mJ), by part, and per second of audio.

    Args:
        utterance_costs: Each utterance's layer costs (with shapes).
        neurons: Per neuron layer: channels, timesteps, rate, nonzero_fraction,
            adaptive (IMLS threshold statistic), leak (multi-step neurons).
        semantics: "ann", "spike_train" or "multi_level".
        costs: Energies per operation and access.
        seconds: Audio seconds per utterance, for the per-second figure.
    """
    parts = dict.fromkeys(PARTS, 0.0)
    for layer_costs in utterance_costs:
        tally = utterance_tally(layer_costs, neurons, semantics, costs.fifo_words)
        for part, pj in tally.energy_pj(costs).items():
            parts[part] += pj
    count = len(utterance_costs)
    total = sum(parts.values())
    result = {"semantics": semantics, "energy_mj": total / count / 1e9,
              "parts_mj": {k: v / count / 1e9 for k, v in parts.items()}}
    if seconds:
        result["mj_per_second"] = total / 1e9 / sum(seconds)
    return result


def twin_bits(timesteps: int) -> int:
    """Bits of the quantised twin of a T-step spike count: ceil(log2(T + 1))."""
    return math.ceil(math.log2(timesteps + 1))


def neuron_stats(recorder) -> Dict[str, Dict]:
    """Per neuron layer statistics the model needs, from a FiringRateRecorder."""
    stats = {}
    for name, layer in recorder.layers.items():
        module = recorder.neurons.get(name)
        stats[name] = {
            "channels": layer.channels, "timesteps": layer.timesteps,
            "rate": layer.rate, "nonzero_fraction": layer.nonzero / max(1, layer.outputs),
            "adaptive": hasattr(module, "running_max") or (
                hasattr(module, "divisor") and getattr(module, "scale", 1.0) != 1.0),
            "leak": float(getattr(module, "leak", 1.0)),
        }
    return stats


def summary_rows(results: List[Tuple[str, Dict, Optional[Dict]]]) -> str:
    """Markdown table: name, parts (encoder blocks), totals without and with the front."""
    lines = ["| Model | counting | " + " | ".join(PARTS) + " | total, blocks only "
             "(mJ/utt) | total, with conv front (mJ/utt) | blocks only, mJ per s of audio "
             "| with front, mJ per s |",
             "|---|---|" + "---|" * (len(PARTS) + 4)]

    def per_s(r):
        return "" if not r or r.get("mj_per_second") is None else f"{r['mj_per_second']:.4g}"

    for name, blocks, front in results:
        p = blocks["parts_mj"]
        lines.append(
            f"| {name} | {blocks['semantics']} | "
            + " | ".join(f"{p[k]:.4g}" for k in PARTS)
            + f" | {blocks['energy_mj']:.4g} | "
            + ("" if front is None else f"{front['energy_mj']:.4g}")
            + f" | {per_s(blocks)} | {per_s(front)} |")
    return "\n".join(lines)
