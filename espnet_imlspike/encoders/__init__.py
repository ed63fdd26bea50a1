"""ESPnet encoders built from the spiking blocks (ASR: :mod:`.asr`, SPK: :mod:`.spk`).

:mod:`.options` holds the one options object every encoder keeps (``encoder.options``),
:mod:`.common` the input layers, masks and the block builder they share.
"""
