"""Measured accumulates of the attention products, part by part, against Eq. 17.

The deploy form's op counter lumps every accumulate of a spiking attention module into
one entry (``encoders.i.self_attn``). Its parts follow from the spikes that entered the
module in each forward call (one utterance each), which the firing-rate hooks record:
for an utterance of ``n`` valid frames with ``s`` input spikes and ``v`` value spikes,

* fused HD-RepSSA: ``x_wqk`` = H D s (a row of W_QK,h per spike and head),
  ``scores`` = H n s (one value of the projected map per key spike, head and valid
  query), ``bias_terms`` = 2H s (the fused query/key bias terms, Eq. 12 with ESPnet's
  biases; FLOPs leave them out), ``context`` = n v (one weight per value spike and
  valid query);
* SDSA-3: ``key_value`` = d_k k, ``query_kv`` = d_k q (key and query spikes).

The split is checked to add up to the counter's total exactly.

Eq. 17 prices a layer with the data-set firing rate R_l: exact (summed over the
utterances) for the parts linear in the length, but the ``L^2`` parts (scores, context)
then weight every utterance's frames alike, while the count weights each utterance's
spikes by its own length: their gap is ``sum_n (n - L_w)(s_n - R_l T D n) x H`` (with
the length-weighted mean ``L_w``), zero only if the rate does not vary with length.
"""

from typing import Dict, List, Optional

from espnet_imlspike.errors import InputError


def _calls(recorder, name: str) -> List[tuple]:
    if name not in recorder.layers:
        raise InputError(f"no firing statistics for {name}")
    return recorder.layers[name].calls


def attention_parts(encoder, recorder) -> Dict[str, Dict[str, int]]:
    """Accumulates of each attention product per block, from recorded spikes.

    Returns:
        ``{"encoders.i.self_attn": {"x_wqk": .., "scores": .., "bias_terms": ..,
        "context": ..}}`` (SDSA-3: ``key_value``, ``query_kv``).
    """
    parts = {}
    for index, block in enumerate(getattr(encoder, "encoders", [])):
        attn = getattr(block, "self_attn", None)
        if attn is None or not hasattr(block, "attn_input_neuron"):
            continue
        a = f"encoders.{index}.self_attn"
        heads = attn.heads
        if getattr(attn, "kind", "") == "sdsa3":
            d_k = block.norm1.normalized_shape[0] // heads
            keys = _calls(recorder, f"{a}.key_neuron")
            queries = _calls(recorder, f"{a}.query_neuron")
            parts[a] = {"key_value": round(d_k * sum(c[0] for c in keys)),
                        "query_kv": round(d_k * sum(c[0] for c in queries))}
            continue
        size = block.norm1.normalized_shape[0]
        inputs = _calls(recorder, f"encoders.{index}.attn_input_neuron")
        values = _calls(recorder, f"{a}.value_neuron")
        spikes = sum(c[0] for c in inputs)
        parts[a] = {
            "x_wqk": round(heads * size * spikes),
            "scores": round(heads * sum(c[0] * c[3] for c in inputs)),
            "bias_terms": round(2 * heads * spikes),
            "context": round(sum(v[0] * v[3] for v in values)),
        }
    return parts


def split_measured(measured_ac: Dict[str, int], parts: Dict[str, Dict[str, int]]
                   ) -> Dict[str, int]:
    """Replace each attention module's lumped count by its parts (``module.part``).

    Raises:
        InputError: if the parts of a module do not add up to its counted total.
    """
    split = dict(measured_ac)
    for module, counts in parts.items():
        total = split.pop(module, None)
        if total is None:
            continue
        if sum(counts.values()) != total:
            raise InputError(
                f"{module}: attention parts {counts} add up to {sum(counts.values())}, "
                f"the op counter counted {total}"
            )
        split.update({f"{module}.{part}": value for part, value in counts.items()})
    return split


def gap_text(layers: List[Dict], measured: Dict[str, int]) -> Optional[str]:
    """The accumulate totals and what the gap between them consists of."""
    estimated = {l["name"]: l.get("estimated_ac", 0) for l in layers if "estimated_ac" in l}
    if not estimated:
        return None
    est_total = sum(estimated.values())
    got_total = sum(v for k, v in measured.items() if k in estimated or k.endswith("bias_terms"))
    bias = sum(v for k, v in measured.items() if k.endswith("bias_terms"))
    quadratic = sum(measured.get(k, 0) - v for k, v in estimated.items()
                    if k.endswith((".scores", ".context")))
    other = got_total - est_total - bias - quadratic
    return (
        f"Accumulates over all utterances: estimated from rates (T x R_l x FLOPs) "
        f"{est_total:.6g}, counted in spike-train execution {got_total} (gap "
        f"{got_total - est_total:+.6g}). The gap is: the fused bias terms, 2H per input "
        f"spike, which FLOPs leave out ({bias:+d}); the L^2 products (scores, context), "
        f"which the count weights by each utterance's own length and spikes while Eq. 17 "
        f"uses the data set's mean rate ({quadratic:+.6g}); everything else "
        f"({other:+.6g}: the linear layers and x_wqk, exact by construction)."
    )
