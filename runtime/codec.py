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

import logging
from pathlib import Path

import numpy as np

from meltok_runtime.backends import AUTO_ORDER, BACKENDS, backend_class
from meltok_runtime.errors import BackendError, BundleError, MeltokError, ModelMismatchError
from meltok_runtime.graph_codec import GraphCodec
from meltok_runtime.manifest import Manifest, load_manifest

log = logging.getLogger("meltok_runtime")

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "default"


def default_bundle() -> Path:
    """The bundle shipped with the package (``meltok_runtime/models/default``), if installed."""
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        raise BundleError(f"no default bundle is installed ({DEFAULT_BUNDLE} is missing); pass a bundle folder "
                          "written by meltok-export (-b BUNDLE)")
    return DEFAULT_BUNDLE


class Codec(GraphCodec):
    """MelTok from an export bundle. Create with ``Codec.open``; close with ``close()`` or ``with``.

    Validation, resampling, windows, batching and trimming: ``pipeline.CodecPipeline``; the bundle's
    contract: ``graph_codec.GraphCodec``; this class opens the bundle's two graphs on a backend and
    supplies them as the graph calls.
    """

    def __init__(self, bundle: Path, manifest: Manifest, backend: str, encoder, decoder, *,
                 window_seconds: float | None = None, context_seconds: float | None = None,
                 skipped: dict | None = None):
        self.bundle = Path(bundle)
        self.backend = backend
        self.skipped = dict(skipped or {})  # backend name -> why ``auto`` did not pick it
        self._encoder, self._decoder = encoder, decoder
        self._encoder_io = (encoder.inputs[0], encoder.outputs[0])
        self._decoder_io = (decoder.inputs[0], decoder.outputs[0])
        super().__init__(manifest, self._run_encoder, self._run_decoder, window_seconds=window_seconds,
                         context_seconds=context_seconds)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, bundle=None, backend: str = "auto", threads: int | None = None, *,
             window_seconds: float | None = None, context_seconds: float | None = None) -> "Codec":
        """Open ``bundle`` (default: the shipped bundle) with ``backend``.

        ``backend="auto"`` takes the first of trt, ort-cuda, ort-cpu that can run here (logged,
        with the reasons the others were skipped, in ``codec.skipped``); a named backend that
        cannot run raises BackendError (EngineMismatchError for an engine built for another GPU,
        TensorRT version or graph) and never falls back. ``threads``: CPU threads per graph
        (ONNX Runtime intra-op threads; default: all cores). ``window_seconds`` is the span the
        backend sees per call, ``context_seconds`` the part of it on each side that is
        processed but not kept (see ``windowing``); both default to the manifest's ``windowing``, else
        to the runtime's defaults (12 s, 1 s), as does the decoding cross-fade.
        """
        bundle = default_bundle() if bundle is None else Path(bundle)
        manifest = load_manifest(bundle, verify_files=False)  # each backend hashes the bytes it loads
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

    @property
    def is_open(self) -> bool:
        return self._encoder.is_open and self._decoder.is_open

    def __repr__(self) -> str:
        return f"<Codec {self.model_id} {self.backend} {str(self.bundle)!r}>"

    # ------------------------------------------------------------------ graph calls
    def _run_encoder(self, audio: np.ndarray) -> np.ndarray:
        spec_in, spec_out = self._encoder_io
        return self._encoder.run({spec_in.name: audio.astype(spec_in.dtype, copy=False)})[spec_out.name]

    def _run_decoder(self, tokens: np.ndarray) -> np.ndarray:
        spec_in, spec_out = self._decoder_io
        return self._decoder.run({spec_in.name: tokens.astype(spec_in.dtype, copy=False)})[spec_out.name]

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        self._encoder.close()
        self._decoder.close()

    def __enter__(self) -> "Codec":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _open_pair(backend_cls, bundle, manifest, threads):
    """Open the encoder and decoder with one backend class; nothing stays open on failure."""
    encoder = backend_cls(bundle, manifest, "encoder", threads=threads).open()
    try:
        decoder = backend_cls(bundle, manifest, "decoder", threads=threads).open()
    except BaseException:
        encoder.close()
        raise
    return encoder, decoder
