"""Streaming IML-Spikeformer: causal HD-RepSSA evaluated chunk by chunk (docs/streaming.md).

:mod:`.options` (what can stream, ``left_context``), :mod:`.cache` (key/value cache and
stream state), :mod:`.causal_attention` (causal decay mask, training form),
:mod:`.front` (conv subsampling with cached input frames and positional offsets),
:mod:`.encoder` (``encoder: iml_spikeformer_streaming``), :mod:`.deploy_attention` and
:mod:`.deploy` (the spike-driven form, streaming too), :mod:`.features` (exact chunk-wise
features) and :mod:`.speech2text` (ESPnet's ``Speech2TextStreaming`` for this encoder).
"""
