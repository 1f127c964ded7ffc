"""``GraphCodec``: a bundle's contract (its manifest) around two graph calls that someone else runs.

``Codec`` runs the graphs itself (ONNX Runtime, TensorRT); a model server runs them elsewhere
(the Triton Python model calls them through Triton's business-logic scripting). Both give the
same two callables to the same ``CodecPipeline``, so validation, resampling, windows, batching
and trimming are those of the runtime, whoever runs the graphs:

- ``encode_graph(audio)``: float32 ``[B, n]`` -> int tokens ``[B, rows, T']``;
- ``decode_graph(tokens)``: int ``[B, rows, w]`` -> float32 audio ``[B, (compression * w - 1) * hop]``
  (or the log-mel ``[B, n_mels, compression * w]`` where the manifest's ``decoder_output`` is ``log_mel``:
  the pipeline finishes it with the manifest's ``MelInverter``, ``mel_decode``).

``B`` never exceeds ``max_batch`` and ``n`` (``w``) never exceeds the bundle's limits.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from meltok_runtime.errors import SettingsError
from meltok_runtime.lengths import padded_length, token_columns
from meltok_runtime.manifest import Manifest
from meltok_runtime.mel_decode import inverter_from_parameters
from meltok_runtime.pipeline import CodecPipeline
from meltok_runtime.windowing import Progress

GraphCall = Callable[[np.ndarray], np.ndarray]


class GraphCodec(CodecPipeline):
    """The ``meltok.MelTok`` user API over ``manifest``'s contract and two graph callables.

    ``max_batch`` caps the batch per graph call (default: the manifest's ``max_batch``; a smaller
    value for a server whose models take smaller batches). ``window_seconds``/``context_seconds`` default
    to the manifest's ``windowing`` (the runtime's defaults for bundles without it), as does the
    decoding cross-fade.
    """

    def __init__(self, manifest: Manifest, encode_graph: GraphCall, decode_graph: GraphCall, *,
                 max_batch: int | None = None, window_seconds: float | None = None,
                 context_seconds: float | None = None):
        self.manifest = manifest
        self._encode_call, self._decode_call = encode_graph, decode_graph
        bundle_batch = int(manifest.limits.get("max_batch") or 0) or None
        if max_batch is not None and (not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1):
            raise SettingsError(f"max_batch is {max_batch!r}; expected a whole number of at least 1, or None")
        self.max_batch = min(filter(None, (bundle_batch, max_batch)), default=None)
        settings = manifest.window_settings()  # the manifest's ``windowing``, defaults filled in
        self.window_columns, self.context_columns = self.window_layout(
            settings["window_seconds"] if window_seconds is None else window_seconds,
            settings["context_seconds"] if context_seconds is None else context_seconds)
        if settings["fade_seconds"] is not None:
            self.fade_columns = settings["fade_seconds"] * self.sample_rate / self.column_samples
        self._mel_inverter = (inverter_from_parameters(manifest.mel_inversion)
                              if manifest.decoder_output == "log_mel" else None)

    def window_limit(self) -> int | None:
        """Columns per graph call the bundle's engines accept (``limits``), less one; None: no limit."""
        limits = self.manifest.limits
        limit = limits.get("max_columns")
        if not limit and limits.get("max_seconds"):
            samples = padded_length(int(limits["max_seconds"] * self.sample_rate), self.hop_length, self.compression)
            limit = token_columns(samples, self.hop_length, self.compression)
        # TensorRT profiles take at most ``limit`` columns (``max_samples``) per call. One column less
        # keeps unpadded input (``pad=False``, up to 1791 samples past its last column) inside too.
        return max(1, int(limit) - 1) if limit else None

    @property
    def windows(self) -> tuple[int, int]:
        return self.window_columns, self.context_columns

    # ----------------------------------------------------------------- contract
    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def hop_length(self) -> int:
        return self.manifest.hop_length

    @property
    def compression(self) -> int:
        return self.manifest.compression

    @property
    def token_rows(self) -> int:
        return self.manifest.token_rows

    @property
    def codebook_size(self) -> int:
        return self.manifest.codebook_size

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def accepts_tokens_of(self) -> tuple[str, ...]:
        """Its own model id and the manifest's ``accepts_tokens_of`` (same tokenizer, checked at export)."""
        return (self.manifest.model_id, *self.manifest.accepts_tokens_of)

    @property
    def token_rate(self) -> float:
        """Tokens per second, all rows."""
        return self.manifest.token_rate

    @property
    def mel_inverter(self):
        """The manifest's ``MelInverter`` for a log-mel decoder; None for an audio decoder."""
        return self._mel_inverter

    @property
    def stream_contract(self) -> dict:
        """The receptive field of time-local models, from the manifest (``{}`` for the reference architecture)."""
        return self.manifest.streaming

    # ------------------------------------------------------------------ user API
    def encode(self, audio, sample_rate: int = 44100, *, pad: bool = True, channels_last: bool = False,
               progress: Progress | None = None) -> np.ndarray:
        """Audio ``[N]``, ``[B, N]`` or ``[B, C, N]`` -> int64 tokens ``[B, rows, T']``.

        Other sample rates are resampled, channels mixed down; ``channels_last``: ``[N, C]`` or
        ``[B, N, C]`` (``soundfile.read``'s layout). With ``pad`` the audio is zero-padded at the end
        so that ``decode(tokens, num_samples=N)`` returns all N samples; ``pad=False`` pads only
        audio shorter than one column. ``progress(done, total)`` is called after every graph call.
        """
        return self._encode_numpy(audio, sample_rate, pad=pad, channels_last=channels_last, windows=None,
                                  progress=progress)

    def decode(self, tokens, num_samples: int | None = None, *, sample_rate: int | None = None,
               progress: Progress | None = None) -> np.ndarray:
        """Tokens ``[rows, T']`` or ``[B, rows, T']`` -> float32 audio ``[B, N']``.

        At the model's rate, ``N' = (compression * T' - 1) * hop``; ``sample_rate`` resamples the
        result. ``num_samples`` (at that rate) trims it, or zero-pads it at the end by at most one
        token column.
        """
        return self._decode_numpy(tokens, num_samples, sample_rate=sample_rate, windows=None, progress=progress)

    # ------------------------------------------------------------------ graph calls
    def _encode_graph(self, audio: np.ndarray) -> np.ndarray:
        return self._encode_call(audio)

    def _decode_graph(self, tokens: np.ndarray) -> np.ndarray:
        return self._decode_call(tokens)
