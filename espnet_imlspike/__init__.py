"""espnet-imlspike: IML-Spikeformer encoders as an ESPnet plugin.

Importing this package is cheap (no torch, no ESPnet): the encoders live in
``espnet_imlspike.encoder`` and are registered into ESPnet's task registries by
``espnet_imlspike.registration`` when ESPnet's task modules are imported.
"""

__version__ = "0.1.0"
