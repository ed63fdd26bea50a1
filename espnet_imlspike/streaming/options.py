"""What a streaming (causal) IML-Spikeformer needs beyond the spiking options.

The spiking options stay :class:`~espnet_imlspike.encoders.options.SpikingOptions`
(validated there); :func:`check_streamable` rejects the ones that cannot run chunk by
chunk, and :class:`StreamingOptions` holds the one option of its own. Every error is an
:class:`~espnet_imlspike.errors.OptionError` that names the option.
"""

import dataclasses

from espnet_imlspike.encoders.options import SpikingOptions
from espnet_imlspike.errors import OptionError

STREAMABLE_FIRING = ("imls", "mls")
STREAMABLE_ATTENTION = ("hd_repssa_softmax", "hd_repssa_linear", "repssa_softmax",
                        "repssa_linear")
# input layers whose output frame i depends on a fixed window of input frames
STREAMABLE_INPUT_LAYERS = ("conv2d", "conv2d1", "conv2d2", "conv2d6", "conv2d8", "linear",
                           None)


@dataclasses.dataclass(frozen=True)
class StreamingOptions:
    """Options of the causal attention.

    Attributes:
        left_context: Encoder frames (after subsampling) each query may attend to,
            itself included; 0 = every past frame. A positive value bounds the key/value
            cache (and the attention cost) of chunk-wise decoding; the full-utterance
            model applies the same window, so both stay equal.
    """

    left_context: int = 0

    def __post_init__(self):
        if not isinstance(self.left_context, int) or self.left_context < 0:
            raise OptionError(
                f"left_context must be an integer >= 0 (0: unlimited), got {self.left_context!r}"
            )


def check_streamable(options: SpikingOptions) -> None:
    """Reject spiking options that cannot be evaluated chunk by chunk.

    Multi-step firing folds T steps into the batch, and SDSA-3's ``Q (K^T V)`` has no
    causal map to cache; "embed" takes token ids, not a stream of features.
    """
    checks = [
        ("firing", options.firing, STREAMABLE_FIRING),
        ("attention", options.attention, STREAMABLE_ATTENTION),
        ("input_layer", options.input_layer, STREAMABLE_INPUT_LAYERS),
    ]
    for name, value, allowed in checks:
        if value not in allowed:
            raise OptionError(
                f"{name}={value!r} cannot stream: the streaming encoder takes {name} "
                f"in {allowed}"
            )
