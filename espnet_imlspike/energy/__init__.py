"""Energy report: firing-rate hooks, per-layer FLOPs, energy (paper Eq. 16-17), plots.

A post-processing stage that never changes the model's maths:

* :mod:`.hooks` records spike counts of every spiking neuron layer over a data set
  (valid frames only) and optionally the attention maps.
* :mod:`.flops` lists the synaptic layers of an encoder with their FLOPs (MACs) for one
  utterance and the neuron layer that feeds each of them.
* :mod:`.report` prices them: ``E_ANN = FLOPs x E_MAC`` and
  ``E_SNN = T x R_l x FLOPs x E_AC`` (real-valued inputs count as MACs), writes JSON and
  Markdown tables; :mod:`.plots` draws firing-rate distributions and attention maps.
"""
