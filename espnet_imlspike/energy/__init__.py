"""Energy report: firing-rate hooks, per-layer FLOPs, energy (paper Eq. 16-17), a
memory-aware energy model, the paper's figures (docs/energy.md).

A post-processing stage that never changes the model's maths:

* :mod:`.hooks` records spike counts of every spiking neuron layer over a data set
  (valid frames only; per layer, per neuron and per utterance) and the attention maps.
* :mod:`.ops` / :mod:`.flops` list the synaptic layers of an encoder with their FLOPs for
  one utterance, the neuron layer that feeds each, and their shapes.
* :mod:`.report` prices them with ``E_ANN = FLOPs x E_MAC`` and
  ``E_SNN = T x R_l x FLOPs x E_AC``; :mod:`.memory_model` adds addressing and memory
  accesses (Lemaire et al.); :mod:`.attention_parts` splits the counted accumulates of
  the attention products; :mod:`.build` assembles one model's report, :mod:`.compare`
  several; :mod:`.plots` draws Fig. 3 and Fig. 4; :mod:`.neurobench_metrics` cross-checks.
"""
