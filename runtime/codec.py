"""``Codec``: a bundle's encoder and decoder behind the ``meltok.MelTok`` user API, without torch.

>>> from meltok_runtime import Codec
>>> with Codec.open("bundle/") as codec:           # backend="auto": trt, then ort-cuda, then ort-cpu
...     tokens = codec.encode(audio, 44100)         # int64 [B, 12, T']
...     decoded = codec.decode(tokens, num_samples=audio.shape[-1])   # float32 [B, N]

Shapes and semantics are those of ``meltok.MelTok.encode``/``decode``: audio ``[N]``, ``[B, N]``
or ``[B, C, N]`` at any sample rate (resampled, mixed down); with ``pad`` the audio is zero-padded
at the end so that decoding covers every sample. Inputs longer than one window are processed in
windows with context (``windowing``), so memory stays bounded whatever the length; batches
larger than the bundle's ``max_batch`` are split.

Thread safety: one open Codec may be used from several threads at once; every call gives the
result a serial call gives (the backends guarantee it, see ``backends.base``). ``close`` must not
race with calls in progress.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from .audio import prepare_audio
from .backends import AUTO_ORDER, BACKENDS, backend_class
from .errors import BackendError, BundleError, MeltokError, ModelMismatchError, TokenInputError
from .framing import check_tokens, decoded_length, padded_length, token_columns
from .manifest import Manifest, load_manifest
from .streaming import DEFAULT_CONTEXT_SECONDS as STREAM_CONTEXT_SECONDS
from .streaming import DEFAULT_FADE_SECONDS, DEFAULT_LOOKAHEAD_SECONDS, StreamDecoder, StreamEncoder, StreamSpec
from .windowing import (DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS, count_windows, decode_windowed,
                        encode_windowed, seconds_to_columns)

log = logging.getLogger("meltok_runtime")

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "default"


def default_bundle() -> Path:
    """The bundle shipped with the package (``meltok_runtime/models/default``), if installed."""
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        raise BundleError(f"no default bundle is installed ({DEFAULT_BUNDLE} is missing); pass a bundle folder "
                          "written by meltok-export (-b BUNDLE)")
    return DEFAULT_BUNDLE


class Codec:
    """MelTok from an export bundle. Create with ``Codec.open``; close with ``close()`` or ``with``."""

    def __init__(self, bundle: Path, manifest: Manifest, backend: str, encoder, decoder, *,
                 window_seconds: float, context_seconds: float, skipped: dict | None = None):
        self.bundle = Path(bundle)
        self.manifest = manifest
        self.backend = backend
        self.skipped = dict(skipped or {})  # backend name -> why ``auto`` did not pick it
        self._encoder, self._decoder = encoder, decoder
        self._encoder_io = (encoder.inputs[0], encoder.outputs[0])
        self._decoder_io = (decoder.inputs[0], decoder.outputs[0])
        self.window_columns, self.context_columns = self._window_layout(window_seconds, context_seconds)
        self.max_batch = int(manifest.limits.get("max_batch") or 0) or None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, bundle=None, backend: str = "auto", threads: int | None = None, *,
             window_seconds: float = DEFAULT_WINDOW_SECONDS,
             context_seconds: float = DEFAULT_CONTEXT_SECONDS) -> "Codec":
        """Open ``bundle`` (default: the shipped bundle) with ``backend``.

        ``backend="auto"`` takes the first of trt, ort-cuda, ort-cpu that can run here (logged,
        with the reasons the others were skipped, in ``codec.skipped``); a named backend that
        cannot run raises BackendError (EngineMismatchError for an engine built for another GPU,
        TensorRT version or graph) and never falls back. ``threads``: CPU threads per graph
        (ONNX Runtime intra-op threads; default: all cores). ``window_seconds`` is the span the
        backend sees per call, ``context_seconds`` the part of it on each side that is
        processed but not kept (see ``windowing``).
        """
        bundle = default_bundle() if bundle is None else Path(bundle)
        manifest = load_manifest(bundle)
        names = AUTO_ORDER if backend == "auto" else (backend_class(backend).name,)
        skipped, corrupt = {}, None
        for name in names:
            try:
                BACKENDS[name].check_available(bundle, manifest)
                encoder, decoder = _open_pair(BACKENDS[name], bundle, manifest, threads)
            except MeltokError as error:
                if backend != "auto":
                    raise
                skipped[name] = str(error)
                corrupt = error if isinstance(error, BundleError) else corrupt
                level = logging.WARNING if isinstance(error, (ModelMismatchError, BundleError)) else logging.INFO
                log.log(level, "backend %s skipped: %s", name, error)
                continue
            if backend == "auto":
                log.info("backend auto: picked %s%s", name,
                         "".join(f"; {other} skipped ({why})" for other, why in skipped.items()))
            try:
                return cls(bundle, manifest, name, encoder, decoder, window_seconds=window_seconds,
                           context_seconds=context_seconds, skipped=skipped)
            except BaseException:
                encoder.close()
                decoder.close()
                raise
        if corrupt is not None:  # the bundle, not this machine, is the problem: say so
            raise corrupt
        raise BackendError("no backend can run this bundle here: "
                           + "; ".join(f"{name}: {why}" for name, why in skipped.items()))

    def _window_layout(self, window_seconds: float, context_seconds: float) -> tuple[int, int]:
        if not window_seconds > 0 or not context_seconds >= 0:
            raise ValueError(f"need window_seconds > 0 and context_seconds >= 0, got {window_seconds}, "
                             f"{context_seconds}")
        window = max(1, seconds_to_columns(window_seconds, self.sample_rate, self.hop_length, self.compression))
        context = seconds_to_columns(context_seconds, self.sample_rate, self.hop_length, self.compression)
        limits = self.manifest.limits
        limit = limits.get("max_columns")
        if not limit and limits.get("max_seconds"):
            samples = padded_length(int(limits["max_seconds"] * self.sample_rate), self.hop_length, self.compression)
            limit = token_columns(samples, self.hop_length, self.compression)
        if limit:
            # TensorRT profiles take at most ``limit`` columns (``max_samples``) per call. One column less
            # keeps unpadded input (``pad=False``, up to 1791 samples past its last column) inside too.
            limit = max(1, int(limit) - 1)
            if window > limit:
                log.info("a window of %d columns exceeds the bundle's limit: using %d", window, limit)
                window = limit
        if window <= 2 * context:
            raise ValueError(f"a window of {window} columns ({window_seconds} s) must exceed twice the context of "
                             f"{context} columns ({context_seconds} s); choose a longer window or a shorter context")
        return window, context

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
    def frame_rate(self) -> float:
        """Mel frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def token_rate(self) -> float:
        """Tokens per second, all rows."""
        return self.manifest.token_rate

    @property
    def is_open(self) -> bool:
        return self._encoder.is_open and self._decoder.is_open

    def __repr__(self) -> str:
        return f"<Codec {self.model_id} {self.backend} {str(self.bundle)!r}>"

    # ------------------------------------------------------------------ windows
    def encode_windows(self, num_samples: int, batch: int = 1, *, pad: bool = True) -> int:
        """Backend calls ``encode`` makes for ``batch`` items of ``num_samples`` samples (at the model rate)."""
        length = padded_length(num_samples, self.hop_length, self.compression, pad=pad)
        columns = token_columns(length, self.hop_length, self.compression)
        return self._chunks(batch) * count_windows(columns, self.window_columns, self.context_columns)

    def decode_windows(self, num_columns: int, batch: int = 1) -> int:
        """Backend calls ``decode`` makes for ``batch`` items of ``num_columns`` token columns."""
        return self._chunks(batch) * count_windows(num_columns, self.window_columns, self.context_columns)

    def _chunks(self, batch: int) -> int:
        return 1 if not self.max_batch else -(-batch // self.max_batch)

    # ------------------------------------------------------------------ user API
    def encode(self, audio, sample_rate: int = 44100, *, pad: bool = True,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Audio ``[N]``, ``[B, N]`` or ``[B, C, N]`` -> int64 tokens ``[B, rows, T']``.

        Other sample rates are resampled, channels mixed down. With ``pad`` the audio is
        zero-padded at the end so that ``decode(tokens, num_samples=N)`` returns all N samples;
        ``pad=False`` pads only audio shorter than one column. ``progress(done, total)`` is
        called after every backend call.
        """
        batch, _ = prepare_audio(audio, sample_rate, self.sample_rate)
        target = padded_length(batch.shape[-1], self.hop_length, self.compression, pad=pad)
        batch = np.pad(batch, ((0, 0), (0, target - batch.shape[-1])))
        tokens = self._batched(batch, self._encode_fn, encode_windowed, progress)
        return tokens.astype(np.int64, copy=False)

    def decode(self, tokens, num_samples: int | None = None, *,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Tokens ``[rows, T']`` or ``[B, rows, T']`` -> float32 audio ``[B, N']`` at ``sample_rate``.

        ``N' = (compression * T' - 1) * hop``, or ``num_samples`` when given (trimmed, or
        zero-padded at the end).
        """
        array = check_tokens(tokens, self.token_rows, self.codebook_size)
        if num_samples is not None and (not isinstance(num_samples, (int, np.integer)) or num_samples < 0):
            raise TokenInputError(f"num_samples must be a non-negative integer or None, got {num_samples!r}")
        audio = self._batched(array.astype(self._decoder_io[0].dtype), self._decode_fn, decode_windowed, progress)
        audio = audio.astype(np.float32, copy=False)
        if num_samples is not None:
            audio = audio[:, :num_samples]
            if audio.shape[-1] < num_samples:
                audio = np.pad(audio, ((0, 0), (0, num_samples - audio.shape[-1])))
        return np.ascontiguousarray(audio)

    def decoded_length(self, num_columns: int) -> int:
        """Samples that ``decode`` returns for ``num_columns`` token columns (no ``num_samples``)."""
        return decoded_length(num_columns, self.hop_length, self.compression)

    # ------------------------------------------------------------------ internals
    def _encode_fn(self, audio: np.ndarray) -> np.ndarray:
        spec_in, spec_out = self._encoder_io
        return self._encoder.run({spec_in.name: audio.astype(spec_in.dtype, copy=False)})[spec_out.name]

    def _decode_fn(self, tokens: np.ndarray) -> np.ndarray:
        spec_in, spec_out = self._decoder_io
        return self._decoder.run({spec_in.name: tokens.astype(spec_in.dtype, copy=False)})[spec_out.name]

    def _batched(self, array, run_fn, windowed, progress):
        """Split the batch by ``max_batch``, run each part windowed, join the results."""
        step = self.max_batch or array.shape[0]
        starts = range(0, array.shape[0], step)
        parts = []
        for index, start in enumerate(starts):
            report = None if progress is None else functools.partial(_chunk_progress, progress, index, len(starts))
            parts.append(windowed(array[start:start + step], run_fn, window_columns=self.window_columns,
                                  context_columns=self.context_columns, hop=self.hop_length,
                                  compression=self.compression, progress=report))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # ------------------------------------------------------------------ streaming
    def stream_decoder(self, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                       context_seconds: float = STREAM_CONTEXT_SECONDS,
                       fade_seconds: float = DEFAULT_FADE_SECONDS) -> StreamDecoder:
        """A stream that decodes tokens as they arrive (``meltok_runtime.streaming``)."""
        return StreamDecoder(self._decode_fn, self._stream_spec(), lookahead_seconds=lookahead_seconds,
                             context_seconds=context_seconds, fade_seconds=fade_seconds)

    def stream_encoder(self, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                       context_seconds: float = STREAM_CONTEXT_SECONDS) -> StreamEncoder:
        """A stream that encodes audio at ``sample_rate`` as it is captured (``meltok_runtime.streaming``)."""
        return StreamEncoder(self._encode_fn, self._stream_spec(), lookahead_seconds=lookahead_seconds,
                             context_seconds=context_seconds)

    def _stream_spec(self) -> StreamSpec:
        return StreamSpec.from_contract(self.manifest.streaming, sample_rate=self.sample_rate,
                                        hop_length=self.hop_length, compression=self.compression,
                                        token_rows=self.token_rows, codebook_size=self.codebook_size,
                                        max_columns=self.window_columns)

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        self._encoder.close()
        self._decoder.close()

    def __enter__(self) -> "Codec":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _chunk_progress(progress, index: int, chunks: int, done: int, total: int) -> None:
    """Report window ``done`` of ``total`` in batch part ``index`` as progress over all parts."""
    progress(index * total + done, chunks * total)


def _open_pair(backend_cls, bundle, manifest, threads):
    """Open the encoder and decoder with one backend class; nothing stays open on failure."""
    encoder = backend_cls(bundle, manifest, "encoder", threads=threads).open()
    try:
        decoder = backend_cls(bundle, manifest, "decoder", threads=threads).open()
    except BaseException:
        encoder.close()
        raise
    return encoder, decoder
