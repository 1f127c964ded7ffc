"""Streaming: decode tokens as they arrive, encode audio as it is captured, with bounded state.

>>> dec = codec.stream_decoder(lookahead_seconds=0.2)   # codec: meltok_runtime.Codec or meltok.MelTok
>>> for tokens in token_source:                        # int [rows, k] or [1, rows, k], any k >= 0
...     play(dec.push(tokens))                         # float32 [n], n may be 0
>>> play(dec.flush())                                  # the rest; the stream is closed

>>> enc = codec.stream_encoder(lookahead_seconds=0.2)
>>> for block in microphone:                           # float32 [n] at codec.sample_rate, any n
...     send(enc.push(block))                          # int64 [rows, k], k may be 0
>>> send(enc.flush())

Both are built on a codec's two graph calls (audio ``[1, n]`` -> tokens ``[1, rows, T']``; tokens
``[1, rows, w]`` -> audio ``[1, (c * w - 1) * hop]``, or a ``windowing.StatefulDecode`` that carries state from
window to window) and its ``StreamSpec``, so the torch model and the runtime share this code. Windows come
from the planner offline windowing uses (``windowing.WindowGrid``): with ``context``, ``step`` and
``lookahead`` in whole token columns (``S = hop * compression`` samples each), window ``k`` covers columns
``[k step, k step + context + step + lookahead)`` and keeps the ``step`` columns after its context:

- the encoder computes a window once the sample after its audio has arrived and emits its kept
  columns; at ``flush`` the audio is zero-padded as ``encode(pad=True)`` pads it;
- the decoder computes a window once its columns have arrived and cross-fades it into the previous one
  over ``fade`` samples centred on the join (complementary raised-cosine weights), so joins have no
  step; the concatenated output has the length offline decoding gives.

Windows lie on a grid of the input itself, so the output depends only on the input and the settings,
never on how it was cut into pushes. Time-local models (``StreamSpec.encoder_dependency``/``decoder_influence``
set, from ``meltok.receptive_field`` or the bundle manifest) get at least the context and lookahead their
receptive field needs, so their streams equal offline results: tokens identical, audio within float
round-off. The reference architecture has no finite receptive field (GroupNorm, global attention): its
streams approximate offline results (README, "Streaming", has the figures).

State is about one window plus one step whatever the stream's length (``state_nbytes``). A stream is
not shared between threads (each push holds its lock); one codec serves many streams from many threads.
Bad input raises a typed error before any state changes, and a graph call that fails mid-push leaves the
stream as before the push (push the same input again), so the stream stays usable.
"""
from meltok_runtime.stream.decoder import StreamDecoder
from meltok_runtime.stream.encoder import StreamEncoder
from meltok_runtime.stream.spec import (DEFAULT_FADE_SECONDS, DEFAULT_LOOKAHEAD_SECONDS, DEFAULT_STEP_SECONDS,
                                        StreamSpec)
from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS

__all__ = ["StreamDecoder", "StreamEncoder", "StreamSpec", "DEFAULT_CONTEXT_SECONDS", "DEFAULT_FADE_SECONDS",
           "DEFAULT_LOOKAHEAD_SECONDS", "DEFAULT_STEP_SECONDS"]
