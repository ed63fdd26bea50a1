"""The encoder's input layer, chunk by chunk: cached input frames, positional offsets.

ESPnet's ``Conv2dSubsampling*`` layers are stacks of unpadded convolutions along time:
output frame i is a function of input frames ``[i s, i s + w)`` only (stride s, window
w; conv2d: s = 4, w = 7). Chunk-wise, the input frames that the next output frame still
needs are kept (:attr:`StreamState.features <espnet_imlspike.streaming.cache.StreamState>`)
and prepended to the next chunk, so every output frame sees the same window as in the
full utterance. The positional encoding is added with the absolute position of each
output frame (``offset``), as the full utterance adds it. "linear" and None layers are
frame-wise (s = w = 1).
"""

from typing import Optional, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding

from espnet_imlspike.encoders.common import CONV_SUBSAMPLING
from espnet_imlspike.errors import OptionError
from espnet_imlspike.streaming.cache import StreamState


def conv_geometry(conv: torch.nn.Sequential) -> Tuple[int, int]:
    """(stride, window) in input frames of a stack of unpadded Conv2d layers (time axis)."""
    stride, window = 1, 1
    for layer in conv:
        if isinstance(layer, torch.nn.Conv2d):
            if layer.padding[0] != 0 or layer.dilation[0] != 1:
                raise OptionError("the streaming front needs unpadded, undilated convolutions")
            window += (layer.kernel_size[0] - 1) * stride
            stride *= layer.stride[0]
    return stride, window


def add_positions(
    pos_enc: PositionalEncoding, xs: torch.Tensor, offset: int
) -> torch.Tensor:
    """ESPnet's ``PositionalEncoding`` for frames at positions ``offset, offset + 1, ...``."""
    end = offset + xs.size(1)
    pos_enc.extend_pe(xs.new_zeros(1, end))
    return pos_enc.dropout(xs * pos_enc.xscale + pos_enc.pe[:, offset:end])


class ChunkedFront:
    """Runs an encoder's input layer (``encoder.embed``) on a stream of feature chunks.

    Args:
        embed: ESPnet's Conv2dSubsampling* module, the "linear" Sequential, a Linear,
            or None.
        input_layer: The encoder's ``input_layer`` option.
    """

    def __init__(self, embed: Optional[torch.nn.Module], input_layer):
        self.embed = embed
        self.input_layer = input_layer
        self.stride, self.window = 1, 1
        self.pos_enc = None
        if input_layer in CONV_SUBSAMPLING:
            self.stride, self.window = conv_geometry(embed.conv)
            if isinstance(embed.out, torch.nn.Sequential):  # Linear, PositionalEncoding
                self.linear, self.pos_enc = embed.out[0], embed.out[1]
            else:  # Conv2dSubsampling8 keeps them apart
                self.linear, self.pos_enc = embed.out, embed.pos_enc
        elif input_layer == "linear":  # Linear, LayerNorm, Dropout, ReLU, PositionalEncoding
            self.pos_enc = embed[-1]
        if self.pos_enc is not None and type(self.pos_enc) is not PositionalEncoding:
            raise OptionError(
                f"the streaming front supports ESPnet's PositionalEncoding, not "
                f"{type(self.pos_enc).__name__}"
            )

    def outputs_for(self, frames: int) -> int:
        """Output frames computable from ``frames`` buffered input frames."""
        return max(0, (frames - self.window) // self.stride + 1)

    def __call__(
        self, state: StreamState, features: torch.Tensor, is_final: bool
    ) -> Tuple[torch.Tensor, int]:
        """Embed what the buffered and the new frames allow.

        Args:
            state: The stream's state (buffer and offsets are updated).
            features: New input frames (N, F, D_in).
            is_final: The stream ends with this chunk (left-over frames are dropped, as
                the full utterance's subsampling drops them).

        Returns:
            (embedded frames (N, n, D), input frames the layer read to make them).
        """
        buffer = features if state.features is None else torch.cat(
            [state.features, features], dim=1
        )
        count = self.outputs_for(buffer.size(1))
        used = (count - 1) * self.stride + self.window if count else 0
        xs = self._embed(buffer[:, :used], state.emitted) if count else None
        state.features = None if is_final else buffer[:, count * self.stride:]
        state.consumed += count * self.stride
        state.emitted += count
        if xs is None:
            size = self._output_size(features)
            xs = features.new_zeros(features.size(0), 0, size)
        return xs, used

    def _output_size(self, features: torch.Tensor) -> int:
        if self.input_layer in CONV_SUBSAMPLING:
            return self.linear.out_features
        if self.embed is None:
            return features.size(-1)
        return self.embed[0].out_features if self.input_layer == "linear" else (
            self.embed.out_features)

    def _embed(self, frames: torch.Tensor, offset: int) -> torch.Tensor:
        if self.input_layer in CONV_SUBSAMPLING:
            xs = self.embed.conv(frames.unsqueeze(1))
            batch, channels, time, freq = xs.size()
            xs = self.linear(xs.transpose(1, 2).contiguous().view(batch, time, channels * freq))
            return add_positions(self.pos_enc, xs, offset)
        if self.input_layer == "linear":
            return add_positions(self.pos_enc, self.embed[:-1](frames), offset)
        return frames if self.embed is None else self.embed(frames)
