"""A bundle's verification clip and ONNX Runtime CPU's outputs on it, so engines are checked without a model.

At export, ``write_reference`` stores a short real clip (16-bit PCM) and the tokens the bundle's own
encoder graph gives on ONNX Runtime CPU in ``verification.npz`` (a few hundred kB), with the decoder
output's RMS and peak (audio; the log-mel for a log-mel decoder) in the manifest (``manifest.verification``). Where engines are built
(``meltok-rt engines``), ``compare_engines`` runs ONNX Runtime CPU and the new engines on that clip:
ONNX Runtime here must give the stored tokens, and the engines must agree with it within
``ENGINE_FLOORS`` (token agreement; decoder SNR on the stored tokens).
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from meltok_runtime.backends import OrtCpuBackend, TrtBackend
from meltok_runtime.errors import BundleError
from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.lengths import padded_length
from meltok_runtime.manifest import file_sha256, verify_file

VERIFICATION_FILE = "verification.npz"
# engine against ONNX Runtime CPU on the clip: (token agreement at least, decoder SNR in dB at least); the same
# limits the export holds graphs to against the PyTorch model (meltok_export.contract.TOLERANCES)
ENGINE_FLOORS = {"fp32": (1.0, 60.0), "fp16": (0.97, 20.0)}
ORT_AGREEMENT_FLOOR = 0.999  # ONNX Runtime CPU here against the export's: other CPUs may flip float32 ties


def _ort_outputs(bundle: Path, manifest, audio: np.ndarray, backend=OrtCpuBackend) -> tuple:
    with backend(bundle, manifest, "encoder") as encoder, backend(bundle, manifest, "decoder") as decoder:
        tokens = encoder.run({"audio": audio})["tokens"]
        return tokens, decoder.run({"tokens": tokens})[decoder_output_name(manifest)]


def decoder_output_name(manifest) -> str:
    """The decoder graph's output name: ``audio``, or ``log_mel`` for a log-mel decoder (``decoder_output``)."""
    return manifest.graphs["decoder"].outputs[0].name


def _padded(audio: np.ndarray, manifest) -> np.ndarray:
    """``[1, padded samples]`` float32: the clip as the runtime feeds the encoder graph."""
    target = padded_length(audio.shape[-1], manifest.hop_length, manifest.compression)
    return np.pad(audio.reshape(1, -1), ((0, 0), (0, target - audio.shape[-1])))


def npz_bytes(arrays: dict) -> bytes:
    """A compressed ``.npz`` (``np.load`` reads it) whose bytes depend only on ``arrays``: every member has
    the same fixed time stamp, so an export writes the same bundle byte for byte every time."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def write_reference(folder, manifest, audio: np.ndarray, *, source: str) -> dict:
    """Store ``audio`` (mono float32 at the bundle's rate, a few seconds) and ONNX Runtime CPU's tokens on it
    in ``folder``; returns the manifest's ``verification`` record."""
    folder = Path(folder)
    pcm = np.clip(np.round(np.asarray(audio, np.float32).ravel() * 32767.0), -32768, 32767).astype(np.int16)
    clip = _padded(pcm.astype(np.float32) / 32767.0, manifest)
    tokens, decoded = _ort_outputs(folder, manifest, clip)
    with atomic_output(folder / VERIFICATION_FILE) as tmp:
        tmp.write_bytes(npz_bytes({"audio_pcm16": pcm, "tokens": tokens.astype(np.int16)}))
    return {"file": VERIFICATION_FILE, "sha256": file_sha256(folder / VERIFICATION_FILE), "source": source,
            "samples": int(pcm.size), "columns": int(tokens.shape[-1]),
            "decoded_rms": float(np.sqrt(np.mean(decoded.astype(np.float64) ** 2))),
            "decoded_peak": float(np.abs(decoded).max())}


def load_reference(bundle, manifest) -> tuple[np.ndarray, np.ndarray]:
    """``(audio [1, padded samples] float32, tokens [1, rows, columns] int32)``; BundleError when absent."""
    record = manifest.verification
    if not record:
        raise BundleError("the bundle holds no verification clip (it was exported before meltok stored one), so "
                          "engines built here cannot be checked: re-export it with `meltok-export`")
    path = Path(bundle) / record["file"]
    verify_file(path, record["sha256"], what="verification clip")
    with np.load(path, allow_pickle=False) as data:
        audio, tokens = data["audio_pcm16"].astype(np.float32) / 32767.0, data["tokens"].astype(np.int32)
    return _padded(audio, manifest), tokens


def _engine_limits(manifest, which: str) -> tuple[int, int]:
    """``(encoder samples, decoder columns)``: the max (``which="profile"``) or opt (``"stream_profile"``) of
    the engines' profile; (0, 0) where the engines have no such profile."""
    engines = {engine.graph: getattr(engine, which) for engine in manifest.engines}
    if not engines.get("encoder") or not engines.get("decoder"):
        return 0, 0
    key = "max" if which == "profile" else "opt"
    return engines["encoder"]["audio"][key][-1], engines["decoder"]["tokens"][key][-1]


def compare_engines(bundle, manifest, *, backend=TrtBackend) -> dict:
    """Run ONNX Runtime CPU and ``backend`` (the bundle's engines) on the stored clip, cut to the engines'
    profile (and, where the engines have a stream profile, on a stream-sized piece of it too); the report,
    with ``passed`` and ``failures`` (empty when every figure is within ``ENGINE_FLOORS``)."""
    bundle = Path(bundle)
    audio, stored = load_reference(bundle, manifest)
    precision = manifest.engines[0].precision
    min_tokens, min_snr = ENGINE_FLOORS[precision]
    report = {"samples": int(audio.shape[1]), "precision": precision,
              "ort_cpu_vs_export": float(np.mean(_ort_outputs(bundle, manifest, audio)[0] == stored))}
    pieces = [_engine_limits(manifest, "profile")]
    if _engine_limits(manifest, "stream_profile")[0]:
        pieces.append(_engine_limits(manifest, "stream_profile"))
    equal = positions = 0
    signal = noise = 0.0
    output = decoder_output_name(manifest)
    with OrtCpuBackend(bundle, manifest, "encoder") as cpu_encoder, \
            OrtCpuBackend(bundle, manifest, "decoder") as cpu_decoder, \
            backend(bundle, manifest, "encoder") as encoder, backend(bundle, manifest, "decoder") as decoder:
        for samples, columns in pieces:
            clip, tokens = audio[:, :samples], stored[..., :columns]
            got, expected = encoder.run({"audio": clip})["tokens"], cpu_encoder.run({"audio": clip})["tokens"]
            equal, positions = equal + int(np.sum(got == expected)), positions + expected.size
            wave, reference = decoder.run({"tokens": tokens})[output], cpu_decoder.run({"tokens": tokens})[output]
            signal += float(np.sum(reference.astype(np.float64) ** 2))
            noise += float(np.sum((wave.astype(np.float64) - reference) ** 2))
    report.update(token_agreement=equal / positions, pieces=[list(piece) for piece in pieces],
                  waveform_snr_db=10.0 * np.log10(max(signal, 1e-30) / max(noise, 1e-30)))
    failures = []
    if report["ort_cpu_vs_export"] < ORT_AGREEMENT_FLOOR:
        failures.append(f"ONNX Runtime CPU here gives {report['ort_cpu_vs_export']:.4%} of the tokens stored at "
                        "export: the bundle's graphs or this onnxruntime differ from the export's")
    if report["token_agreement"] < min_tokens:
        failures.append(f"the {precision} engines give {report['token_agreement']:.4%} of ONNX Runtime CPU's tokens, "
                        f"under {min_tokens:.0%}")
    if report["waveform_snr_db"] < min_snr:
        failures.append(f"the {precision} decoder engine's audio is {report['waveform_snr_db']:.1f} dB from ONNX "
                        f"Runtime CPU's, under {min_snr:.0f} dB")
    return {**report, "passed": not failures, "failures": failures}
