"""Verification of exported graphs (and engines) against the PyTorch model, on fixed real audio.

Every export runs it, and ``meltok-export verify`` reruns it. Figures (per case and overall):

- ``token_agreement``: share of token positions where the graph's tokens equal the model's;
  ``token_mismatches_beyond_ties``: mismatches that are not float32 round-off ties of the VQ distance
  (the two codes' distances differ by more than ``TIE_RTOL * (|z|^2 + |e|^2)``; a random-weight model has
  near-equal codes, whose order any change of summation order may flip);
- ``waveform_max_error`` and ``waveform_snr_db``: the decoder graph fed the model's tokens, against the
  model's audio (error relative to ``max(1, peak)``);
- ``mel_mean_error``/``mel_max_error``: the same two waveforms compared as natural-log mels;
- ``mel_distance`` (fp16 and int8 graphs): DAC's multi-scale mel distance (``meltok.metrics.mel_distance``)
  of the graph's audio against the model's, the worst batch item.

A log-mel decoder (``mel_inversion`` models: the runtime's ``MelInverter`` makes the audio, the same numpy
code on both sides) is verified on what its graph gives: ``waveform_*`` compare its log-mel with the
model's (``MelTok.decode_features``) as arrays, ``mel_*_error`` are their absolute differences, and
``mel_distance`` compares the two log-mels' ``MelInverter`` audio.

The graphs and engines run on the runtime's own backends (``meltok_runtime.backends``): ort-cpu always,
ort-cuda where it is available here, trt where the bundle has engines; exactly the code ``meltok-rt``
runs. Thresholds, per precision, are in ``meltok_export.contract.TOLERANCES``: float32 graphs must reproduce every token (up to ties)
and the waveform to round-off; float16 graphs must keep ``FP16_TOKEN_FLOOR`` of the tokens (the goal is
``FP16_TOKEN_GOAL``) and the waveform within the stated SNR and mel error; int8 graphs (ONNX Runtime CPU,
``meltok_export.quantize``) must keep ``INT8_TOKEN_FLOOR`` of the tokens and decode within
``INT8_MEL_DISTANCE_MAX`` of the float32 audio. The int8 floors are set below what the random-weight
presets reach (see ``INT8_TOKEN_FLOOR``): an export that falls under them quantized something it should not.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meltok_runtime.backends import backend_class
from meltok_runtime.backends.ort import import_onnxruntime
from meltok_runtime.engines.reference import decoder_output_name
from meltok_runtime.errors import MeltokError, ModelMismatchError
from meltok_runtime.lengths import decoded_length, padded_length, token_columns
from meltok_runtime.manifest import load_manifest, verify_file

from .contract import (FP16_TOKEN_GOAL, INT8_TOKEN_FLOOR, LOSSY, TIE_RTOL, TOLERANCES, VERIFY_AUDIO,
                       verify_audio)
from .errors import VerificationError
from .onnx_export import model_sha256

log = logging.getLogger("meltok_export")


@dataclass(frozen=True)
class Case:
    """One verification input: ``batch`` segments of ``samples`` samples starting at ``offsets`` in the clip."""

    name: str
    samples: int
    offsets: tuple


def verification_cases(model, clip_samples: int, max_batch: int = 2) -> list[Case]:
    """Whole clip padded as the runtime pads, an odd unpadded length, and (``max_batch`` >= 2) a batch of two
    odd-length segments."""
    hop, compression = model.hop_length, model.config.tokenizer.compression
    rate = model.sample_rate
    if clip_samples < rate // 2:
        raise ValueError(f"verification needs at least 0.5 s of audio, got {clip_samples} samples")
    whole = padded_length(clip_samples, hop, compression)
    odd = min(int(1.5 * rate), clip_samples - 2) | 1
    cases = [Case("padded-clip", whole, (0,)), Case("odd-length", odd, (min(clip_samples // 3, clip_samples - odd),))]
    if max_batch >= 2:
        pair = min(2 * rate, clip_samples // 2 - 1) | 1
        cases.append(Case("batch-2", pair, (0, clip_samples - pair)))
    return cases


def _case_audio(clip: np.ndarray, case: Case) -> np.ndarray:
    rows = []
    for offset in case.offsets:
        segment = clip[offset:offset + case.samples]
        rows.append(np.pad(segment, (0, case.samples - segment.shape[0])))
    return np.stack(rows).astype(np.float32)


def _reference(model, audio: np.ndarray) -> dict:
    """PyTorch float32 tokens, VQ distances and audio for one case."""
    import torch

    with torch.inference_mode():
        batch = torch.from_numpy(audio)
        latent = model.latent(model.log_mel(batch))
        distances = model.quantizer.distances(latent)
        tokens = distances.argmin(-1)
        flat = latent.float().permute(0, 2, 3, 1)
        codebook = model.quantizer.embedding.weight.float()
        scale = (flat * flat).sum(-1) + (codebook * codebook).sum(-1)[tokens]
        # what the decoder graph gives: audio, or a mel_inversion model's log-mel
        decoded = (model.detokenize(tokens) if model.mel_inverter is None
                   else model.decode_features(model.quantizer.lookup(tokens)))
    return {"tokens": tokens.numpy(), "distances": distances.numpy(), "scale": scale.numpy(),
            "audio": decoded.float().numpy()}


def _log_mel(model, audio: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model.log_mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))).numpy()


def compare_tokens(tokens: np.ndarray, reference: dict) -> dict:
    """Agreement of ``tokens`` with the reference's, and the mismatches that are not distance ties."""
    expected = reference["tokens"]
    if tokens.shape != expected.shape:
        raise VerificationError(f"tokens have shape {list(tokens.shape)}, the model gives {list(expected.shape)}")
    mismatch = tokens.astype(np.int64) != expected
    distances = reference["distances"]
    chosen = np.take_along_axis(distances, tokens.astype(np.int64)[..., None], -1)[..., 0]
    best = np.take_along_axis(distances, expected[..., None], -1)[..., 0]
    beyond = mismatch & (chosen - best > TIE_RTOL * np.maximum(reference["scale"], 1e-12))
    return {"token_agreement": float(1.0 - mismatch.mean()), "token_mismatches": int(mismatch.sum()),
            "token_mismatches_beyond_ties": int(beyond.sum()), "token_positions": int(mismatch.size)}


def compare_audio(model, audio: np.ndarray, reference: np.ndarray, *, mel_distance: bool = False) -> dict:
    """Waveform and log-mel error of ``audio`` against ``reference`` (both ``[B, N]``); with ``mel_distance``
    also the multi-scale mel distance (the worst batch item; None without)."""
    if audio.shape != reference.shape:
        raise VerificationError(f"audio has shape {list(audio.shape)}, the model gives {list(reference.shape)}")
    max_error, snr = _array_error(audio, reference)
    mel_error = np.abs(_log_mel(model, audio) - _log_mel(model, reference))
    distance = None
    if mel_distance:
        from meltok.metrics import mel_distance as multiscale

        distance = max(multiscale(ref, out, sample_rate=model.sample_rate) for ref, out in zip(reference, audio))
    return {"waveform_max_error": max_error, "waveform_snr_db": snr,
            "mel_mean_error": float(mel_error.mean()), "mel_max_error": float(mel_error.max()),
            "mel_distance": None if distance is None else float(distance)}


def _array_error(estimate: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(largest absolute error relative to ``max(1, peak of reference)``, SNR in dB) of two equal-shape arrays."""
    error = estimate.astype(np.float64) - reference
    peak = max(1.0, float(np.abs(reference).max()))
    snr = 10.0 * np.log10(max(float(np.sum(reference.astype(np.float64) ** 2)), 1e-30)
                          / max(float(np.sum(error ** 2)), 1e-30))
    return float(np.abs(error).max()) / peak, float(snr)


def compare_log_mel(model, log_mel: np.ndarray, reference: np.ndarray, *, mel_distance: bool = False) -> dict:
    """``compare_audio``'s figures for a log-mel decoder's output ``[B, n_mels, T]`` against the model's: the
    arrays' error (``waveform_*``) and absolute difference (``mel_*_error``); with ``mel_distance`` the
    multi-scale mel distance of their ``MelInverter`` audio."""
    if log_mel.shape != reference.shape:
        raise VerificationError(f"the log-mel has shape {list(log_mel.shape)}, the model gives {list(reference.shape)}")
    max_error, snr = _array_error(log_mel, reference)
    mel_error = np.abs(log_mel.astype(np.float64) - reference)
    distance = None
    if mel_distance:
        from meltok.metrics import mel_distance as multiscale

        audio, expected = model.mel_inverter(log_mel)[0], model.mel_inverter(reference)[0]
        distance = max(multiscale(ref, out, sample_rate=model.sample_rate) for ref, out in zip(expected, audio))
    return {"waveform_max_error": max_error, "waveform_snr_db": snr,
            "mel_mean_error": float(mel_error.mean()), "mel_max_error": float(mel_error.max()),
            "mel_distance": None if distance is None else float(distance)}


def _summarise(cases: list[dict]) -> dict:
    positions = sum(c["token_positions"] for c in cases)
    return {
        "token_agreement": 1.0 - sum(c["token_mismatches"] for c in cases) / positions,
        "token_mismatches_beyond_ties": sum(c["token_mismatches_beyond_ties"] for c in cases),
        "waveform_max_error": max(c["waveform_max_error"] for c in cases),
        "waveform_snr_db": min(c["waveform_snr_db"] for c in cases),
        "mel_mean_error": max(c["mel_mean_error"] for c in cases),
        "mel_max_error": max(c["mel_max_error"] for c in cases),
        "mel_distance": (None if any(c["mel_distance"] is None for c in cases)
                         else max(c["mel_distance"] for c in cases)),
    }


def check_tolerances(figures: dict, precision: str, what: str) -> list[str]:
    """Failures of ``figures`` against ``TOLERANCES[precision]`` (empty when they pass)."""
    limits = TOLERANCES[precision]
    failures = []
    for key, limit in limits.items():
        if limit is None:
            continue
        figure, bound = key.rsplit("_", 1)
        value = figures[figure]
        if not ((bound == "min" and value >= limit) or (bound == "max" and value <= limit)):  # NaN fails
            failures.append(f"{what} {figure} is {value:.6g}, the {precision} limit is "
                            f"{'at least' if bound == 'min' else 'at most'} {limit:g}")
    return failures


def _run_cases(model, run_encoder, run_decoder, cases, clip, references, outputs: dict | None = None, *,
               mel_distance: bool = False) -> list[dict]:
    """Run every case; figures per case (and, with ``outputs``, the raw tokens and audio by case name)."""
    results = []
    hop, compression = model.hop_length, model.config.tokenizer.compression
    for case in cases:
        audio = _case_audio(clip, case)
        reference = references[case.name]
        tokens = np.asarray(run_encoder(audio))
        columns = token_columns(case.samples, hop, compression)
        expected_shape = (audio.shape[0], model.token_rows, columns)
        if tokens.shape != expected_shape or tokens.dtype != np.int32:
            raise VerificationError(f"the encoder gave {tokens.dtype} {list(tokens.shape)} for {list(audio.shape)} "
                                    f"audio; the contract is int32 {list(expected_shape)}")
        decoded = np.asarray(run_decoder(reference["tokens"].astype(np.int32)))
        if not np.isfinite(decoded).all():
            raise VerificationError(f"the decoder gave non-finite output (NaN or Inf) for the {case.name} case; "
                                    "the graph overflows (float16?) for this model")
        log_mel = model.mel_inverter is not None
        expected_audio = ((audio.shape[0], model.config.frontend.n_mels, compression * columns) if log_mel
                          else (audio.shape[0], decoded_length(columns, hop, compression)))
        if decoded.shape != expected_audio or decoded.dtype != np.float32:
            raise VerificationError(f"the decoder gave {decoded.dtype} {list(decoded.shape)}; the contract is "
                                    f"float32 {list(expected_audio)}")
        if outputs is not None:
            outputs[case.name] = (tokens, decoded)
        results.append({"name": case.name, "batch": audio.shape[0], "samples": case.samples, "columns": columns,
                        **compare_tokens(tokens, reference),
                        **(compare_log_mel if log_mel else compare_audio)(model, decoded, reference["audio"],
                                                                          mel_distance=mel_distance)})
    return results


@contextlib.contextmanager
def _runners(name: str, folder: Path, manifest, threads: int | None):
    """``(run_encoder, run_decoder)`` over the runtime backend ``name`` on the bundle in ``folder``."""
    backend = backend_class(name)
    with backend(folder, manifest, "encoder", threads=threads) as encoder, \
            backend(folder, manifest, "decoder", threads=threads) as decoder:
        output = decoder_output_name(manifest)  # "audio", or "log_mel" (mel_inversion models)
        yield (lambda audio: encoder.run({"audio": audio})["tokens"],
               lambda tokens: decoder.run({"tokens": tokens})[output])


def _skip_reason(name: str, folder: Path, manifest) -> str | None:
    try:
        backend_class(name).check_available(folder, manifest)
    except MeltokError as error:
        return str(error)
    return None


def _clip_and_cases(model, max_seconds: float, max_batch: int = 2, max_samples: int | None = None):
    clip = verify_audio(model.sample_rate)[: int(max_seconds * model.sample_rate)]
    cases = [case for case in verification_cases(model, clip.shape[0], max_batch)
             if max_samples is None or case.samples <= max_samples]
    return clip, cases, {case.name: _reference(model, _case_audio(clip, case)) for case in cases}


def verify_graphs(model, folder, manifest, *, max_seconds: float = 6.0, threads: int | None = None) -> dict:
    """Run the bundle in ``folder`` (described by ``manifest``, written or not) with ort-cpu, and with ort-cuda
    where it is available, against ``model``.

    Returns the ort-cpu report (``cases``, overall figures, ``tolerances``, ``passed``, ``failures``) with
    ``report["ort_cuda"]`` (figures, or ``{"skipped": reason}``); does not raise on failed tolerances
    (``require_passed`` does).
    """
    folder = Path(folder)
    precision = manifest.graphs["encoder"].precision
    clip, cases, references = _clip_and_cases(model, max_seconds)
    lossy = precision in LOSSY
    cpu_outputs: dict = {}
    with _runners("ort-cpu", folder, manifest, threads) as (encoder, decoder):
        results = _run_cases(model, encoder, decoder, cases, clip, references, cpu_outputs, mel_distance=lossy)
    figures = _summarise(results)
    failures = check_tolerances(figures, precision, "ONNX Runtime CPU")
    report = {"backend": f"meltok_runtime ort-cpu (onnxruntime {import_onnxruntime().__version__})", "precision": precision,
              "reference": "PyTorch float32 model on CPU", "audio": f"{VERIFY_AUDIO} ({clip.shape[0]} samples)",
              **figures, "fp16_token_goal": FP16_TOKEN_GOAL if precision == "fp16" else None,
              "int8_token_floor": INT8_TOKEN_FLOOR if precision == "int8" else None,
              "cases": results, "tolerances": TOLERANCES[precision], "passed": not failures, "failures": failures}
    reason = "int8 graphs are for the CPU" if precision == "int8" else _skip_reason("ort-cuda", folder, manifest)
    report["ort_cuda"] = ({"skipped": reason} if reason else
                          _verify_backend("ort-cuda", model, folder, manifest, cases, clip, references, cpu_outputs))
    return report


def verify_engines(model, folder, manifest, *, max_seconds: float = 6.0) -> dict:
    """Run the bundle's TensorRT engines (the runtime's trt backend) on the cases within their profiles.

    Returns ``{"skipped": reason}`` where the bundle has no engines, or TensorRT, a GPU or a matching
    engine is missing here.
    """
    folder = Path(folder)
    if not manifest.engines:
        return {"skipped": "the bundle has no TensorRT engines"}
    reason = _skip_reason("trt", folder, manifest)
    if reason:
        return {"skipped": reason}
    by_graph = {engine.graph: engine for engine in manifest.engines}
    max_batch = min(by_graph["encoder"].profile["audio"]["max"][0], by_graph["decoder"].profile["tokens"]["max"][0])
    clip, cases, references = _clip_and_cases(model, max_seconds, max_batch,
                                              by_graph["encoder"].profile["audio"]["max"][1])
    cpu_outputs: dict = {}
    with _runners("ort-cpu", folder, manifest, None) as (encoder, decoder):
        _run_cases(model, encoder, decoder, cases, clip, references, cpu_outputs)
    return _verify_backend("trt", model, folder, manifest, cases, clip, references, cpu_outputs)


def _verify_backend(name: str, model, folder: Path, manifest, cases, clip, references, cpu_outputs) -> dict:
    """Figures of the GPU backend ``name`` against the model, and against ort-cpu's outputs on the same cases."""
    precision = manifest.graphs["encoder"].precision
    outputs: dict = {}
    with _runners(name, folder, manifest, None) as (encoder, decoder):
        results = _run_cases(model, encoder, decoder, cases, clip, references, outputs,
                             mel_distance=precision in LOSSY)
    figures = _summarise(results)
    failures = check_tolerances(figures, precision, name)
    versus = _compare_runners(outputs, {case: cpu_outputs[case] for case in outputs})
    if precision == "fp32" and versus["token_agreement"] < 1.0:
        failures.append(f"{name} fp32 tokens agree with ort-cpu on {versus['token_agreement']:.4%} of the positions, "
                        "not all: a float32 path computes in lower precision (TF32?)")
    return {"backend": name, **figures, "vs_onnxruntime": versus, "cases": results, "passed": not failures,
            "failures": failures}


def _compare_runners(outputs: dict, baseline: dict) -> dict:
    """Polygraphy-style comparison of two runners' outputs on the same feeds: token agreement, audio SNR
    and max error (the decoders were fed the same tokens)."""
    tokens_equal = positions = 0
    signal = noise = max_error = 0.0
    for name, (tokens, audio) in outputs.items():
        base_tokens, base_audio = baseline[name]
        tokens_equal += int((tokens == base_tokens).sum())
        positions += tokens.size
        error = audio.astype(np.float64) - base_audio
        signal += float(np.sum(base_audio.astype(np.float64) ** 2))
        noise += float(np.sum(error ** 2))
        max_error = max(max_error, float(np.abs(error).max()))
    return {"token_agreement": tokens_equal / max(positions, 1), "waveform_max_error": max_error,
            "waveform_snr_db": 10.0 * np.log10(max(signal, 1e-30) / max(noise, 1e-30))}


def require_passed(report: dict, what: str) -> None:
    """Raise VerificationError when a report (or its ``tensorrt`` part) failed."""
    failures = [*report.get("failures", []), *report.get("ort_cuda", {}).get("failures", []),
                *report.get("tensorrt", {}).get("failures", [])]
    if failures:
        raise VerificationError(f"{what} failed verification against the PyTorch model: {'; '.join(failures)}. "
                                "The export is wrong for this model: report it with the model's config")


def tolerance_record(report: dict) -> dict:
    """The figures and limits a manifest keeps (``manifest.tolerances``)."""
    keys = ("token_agreement", "token_mismatches_beyond_ties", "waveform_max_error", "waveform_snr_db",
            "mel_mean_error", "mel_max_error")
    lossy = report.get("mel_distance") is not None
    keys += ("mel_distance",) if lossy else ()
    record = {"onnxruntime": {key: report[key] for key in keys}, "limits": report["tolerances"],
              "reference": report["reference"], "audio": report["audio"], "backend": report["backend"],
              "cases": [{k: c[k] for k in ("name", "batch", "samples", "columns", "token_agreement",
                                            "waveform_snr_db") + (("mel_distance",) if lossy else ())}
                        for c in report["cases"]]}
    for key in ("fp16_token_goal", "int8_token_floor"):
        if report.get(key) is not None:
            record[key] = report[key]
    for part in ("ort_cuda", "tensorrt"):
        gpu = report.get(part)
        if gpu:
            record[part] = ({"skipped": gpu["skipped"]} if "skipped" in gpu
                            else {key: gpu[key] for key in keys} | {"backend": gpu["backend"],
                                                                     "vs_onnxruntime": gpu["vs_onnxruntime"]})
    return record


def verify_bundle(bundle, model, *, max_seconds: float = 6.0) -> dict:
    """Rerun a bundle's verification against ``model`` on every backend that can run it here; returns the
    report, raises VerificationError on failure.

    The model must be the one the bundle was exported from (ModelMismatchError otherwise).
    """
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    digest = model_sha256(model)
    if manifest.model_sha256 != digest:
        raise ModelMismatchError(f"bundle {str(bundle)!r} was exported from model {manifest.model_id!r} "
                                 f"(weights {manifest.model_sha256[:12]}), but the given model has weights "
                                 f"{digest[:12]} ({model.model_id}); pass the model file it was exported from")
    report = verify_graphs(model, bundle, manifest, max_seconds=max_seconds)
    for engine in manifest.engines:
        verify_file(bundle / engine.file, engine.sha256, what=f"{engine.graph} engine")
    report["tensorrt"] = verify_engines(model, bundle, manifest, max_seconds=max_seconds)
    require_passed(report, f"bundle {str(bundle)!r}")
    return report
