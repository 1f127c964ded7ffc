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

Thresholds, per precision, are in ``TOLERANCES``: float32 graphs must reproduce every token (up to ties)
and the waveform to round-off; float16 graphs must keep ``FP16_TOKEN_FLOOR`` of the tokens (the goal is
``FP16_TOKEN_GOAL``) and the waveform within the stated SNR and mel error; int8 graphs (ONNX Runtime CPU,
``meltok_export.quantize``) must keep ``INT8_TOKEN_FLOOR`` of the tokens and decode within
``INT8_MEL_DISTANCE_MAX`` of the float32 audio. The int8 floors are set below what the random-weight
presets reach (see ``INT8_TOKEN_FLOOR``): an export that falls under them quantized something it should not.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from meltok_runtime.errors import BundleError, ModelMismatchError
from meltok_runtime.framing import decoded_length, padded_length, token_columns

log = logging.getLogger("meltok_export")

VERIFY_AUDIO = "assets/verify.flac"
TIE_RTOL = 1e-5
FP16_TOKEN_GOAL = 0.99
FP16_TOKEN_FLOOR = 0.97
# Int8, on the verification clip (tokens vs the PyTorch float32 model; decoder fed the model's tokens):
# random-weight tiny/edge/paper presets and a briefly trained edge model reach 0.9x of the tokens and a mel
# distance of 0.1-0.3 (the float16 graphs: 0.996 and 0.005). Random weights are the hard case: their token
# distances are nearly tied and their layers amplify the 8-bit rounding.
INT8_TOKEN_FLOOR = 0.85
INT8_MEL_DISTANCE_MAX = 0.5
TOLERANCES = {
    "fp32": {"token_agreement_min": 1.0, "token_mismatches_beyond_ties_max": 0, "waveform_max_error_max": 1e-3,
             "waveform_snr_db_min": 60.0, "mel_mean_error_max": 1e-3},
    "fp16": {"token_agreement_min": FP16_TOKEN_FLOOR, "token_mismatches_beyond_ties_max": None,
             "waveform_max_error_max": None, "waveform_snr_db_min": 20.0, "mel_mean_error_max": 0.05},
    "int8": {"token_agreement_min": INT8_TOKEN_FLOOR, "token_mismatches_beyond_ties_max": None,
             "waveform_max_error_max": None, "waveform_snr_db_min": None, "mel_mean_error_max": None,
             "mel_distance_max": INT8_MEL_DISTANCE_MAX},
}
LOSSY = ("fp16", "int8")  # precisions whose verification also measures the mel distance


class VerificationError(BundleError):
    """Exported graphs or engines that do not reproduce the PyTorch model within the tolerances."""


@dataclass(frozen=True)
class Case:
    """One verification input: ``batch`` segments of ``samples`` samples starting at ``offsets`` in the clip."""

    name: str
    samples: int
    offsets: tuple


def verify_audio(sample_rate: int = 44100) -> np.ndarray:
    """The shipped verification clip (real music, mono float32) at ``sample_rate``."""
    import soundfile

    with resources.files("meltok_export").joinpath(VERIFY_AUDIO).open("rb") as handle:
        audio, rate = soundfile.read(handle, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != sample_rate:
        import soxr

        audio = soxr.resample(audio, rate, sample_rate).astype(np.float32)
    return np.ascontiguousarray(audio, dtype=np.float32)


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
        waveform = model.detokenize(tokens)
    return {"tokens": tokens.numpy(), "distances": distances.numpy(), "scale": scale.numpy(),
            "audio": waveform.float().numpy()}


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
    error = audio.astype(np.float64) - reference
    peak = max(1.0, float(np.abs(reference).max()))
    snr = 10.0 * np.log10(max(float(np.sum(reference.astype(np.float64) ** 2)), 1e-30)
                          / max(float(np.sum(error ** 2)), 1e-30))
    mel_error = np.abs(_log_mel(model, audio) - _log_mel(model, reference))
    distance = None
    if mel_distance:
        from meltok.metrics import mel_distance as multiscale

        distance = max(multiscale(ref, out, sample_rate=model.sample_rate) for ref, out in zip(reference, audio))
    return {"waveform_max_error": float(np.abs(error).max()) / peak, "waveform_snr_db": float(snr),
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
            raise VerificationError(f"the decoder gave non-finite audio (NaN or Inf) for the {case.name} case; "
                                    "the graph overflows (float16?) for this model")
        expected_audio = (audio.shape[0], decoded_length(columns, hop, compression))
        if decoded.shape != expected_audio or decoded.dtype != np.float32:
            raise VerificationError(f"the decoder gave {decoded.dtype} {list(decoded.shape)}; the contract is "
                                    f"float32 {list(expected_audio)}")
        if outputs is not None:
            outputs[case.name] = (tokens, decoded)
        results.append({"name": case.name, "batch": audio.shape[0], "samples": case.samples, "columns": columns,
                        **compare_tokens(tokens, reference),
                        **compare_audio(model, decoded, reference["audio"], mel_distance=mel_distance)})
    return results


def _ort_runners(folder: Path, threads: int | None = None):
    """``(run_encoder, run_decoder)`` over ONNX Runtime CPU sessions of ``folder``'s graphs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions = {name: onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), options,
                                                   providers=["CPUExecutionProvider"])
                for name in ("encoder", "decoder")}
    return (lambda audio: sessions["encoder"].run(["tokens"], {"audio": audio})[0],
            lambda tokens: sessions["decoder"].run(["audio"], {"tokens": tokens})[0])


def verify_graphs(model, folder, precision: str, *, max_seconds: float = 6.0, threads: int | None = None) -> dict:
    """Run ``folder``'s ``encoder.onnx``/``decoder.onnx`` with ONNX Runtime (CPU) against ``model``.

    Returns the report (``cases``, overall figures, ``tolerances``, ``passed``, ``failures``); does not raise
    on failed tolerances (``require_passed`` does).
    """
    import onnxruntime

    folder = Path(folder)
    clip = verify_audio(model.sample_rate)[: int(max_seconds * model.sample_rate)]
    cases = verification_cases(model, clip.shape[0])
    references = {case.name: _reference(model, _case_audio(clip, case)) for case in cases}
    encoder, decoder = _ort_runners(folder, threads)
    results = _run_cases(model, encoder, decoder, cases, clip, references, mel_distance=precision in LOSSY)
    figures = _summarise(results)
    failures = check_tolerances(figures, precision, "ONNX Runtime")
    return {"backend": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider", "precision": precision,
            "reference": "PyTorch float32 model on CPU", "audio": f"{VERIFY_AUDIO} ({clip.shape[0]} samples)",
            **figures, "fp16_token_goal": FP16_TOKEN_GOAL if precision == "fp16" else None,
            "int8_token_floor": INT8_TOKEN_FLOOR if precision == "int8" else None,
            "cases": results, "tolerances": TOLERANCES[precision], "passed": not failures, "failures": failures}


def verify_engines(model, folder, engines, precision: str, *, max_seconds: float = 6.0) -> dict:
    """Run the TensorRT engines in ``folder`` on the same cases (within their profiles) against ``model``.

    Returns ``{"skipped": reason}`` where TensorRT (or a GPU) is not available.
    """
    from .tensorrt_build import EngineRunner, engine_mismatch, tensorrt_available

    if not engines:
        return {"skipped": "the bundle has no TensorRT engines"}
    reason = tensorrt_available()
    if reason:
        return {"skipped": reason}
    mismatch = next((m for m in map(engine_mismatch, engines) if m), None)
    if mismatch:
        return {"skipped": mismatch}
    folder = Path(folder)
    by_graph = {engine.graph: engine for engine in engines}
    clip = verify_audio(model.sample_rate)[: int(max_seconds * model.sample_rate)]
    max_batch = min(by_graph["encoder"].profile["audio"]["max"][0], by_graph["decoder"].profile["tokens"]["max"][0])
    max_samples = by_graph["encoder"].profile["audio"]["max"][1]
    cases = [c for c in verification_cases(model, clip.shape[0], max_batch) if c.samples <= max_samples]
    references = {case.name: _reference(model, _case_audio(clip, case)) for case in cases}
    engine_outputs, ort_outputs = {}, {}
    with EngineRunner(folder / by_graph["encoder"].file) as encoder, \
            EngineRunner(folder / by_graph["decoder"].file) as decoder:
        results = _run_cases(model, lambda a: encoder.run({"audio": a})["tokens"],
                             lambda t: decoder.run({"tokens": t})["audio"], cases, clip, references, engine_outputs,
                             mel_distance=precision in LOSSY)
    _run_cases(model, *_ort_runners(folder), cases, clip, references, ort_outputs)
    figures = _summarise(results)
    failures = check_tolerances(figures, precision, "TensorRT")
    return {"backend": f"tensorrt {engines[0].tensorrt_version} on {engines[0].device_name}", **figures,
            "vs_onnxruntime": _compare_runners(engine_outputs, ort_outputs), "cases": results,
            "passed": not failures, "failures": failures}


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
    failures = list(report.get("failures", [])) + list(report.get("tensorrt", {}).get("failures", []))
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
    trt = report.get("tensorrt")
    if trt:
        record["tensorrt"] = ({"skipped": trt["skipped"]} if "skipped" in trt
                              else {key: trt[key] for key in keys} | {"backend": trt["backend"],
                                                                       "vs_onnxruntime": trt["vs_onnxruntime"]})
    return record


def verify_bundle(bundle, model, *, max_seconds: float = 6.0) -> dict:
    """Rerun a bundle's verification against ``model``; returns the report, raises VerificationError on failure.

    The model must be the one the bundle was exported from (ModelMismatchError otherwise). With TensorRT
    installed and engines in the bundle, the engines are verified too (``report["tensorrt"]``).
    """
    from meltok_runtime.manifest import load_manifest, verify_file

    from .onnx_export import model_sha256

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    digest = model_sha256(model)
    if manifest.model_sha256 != digest:
        raise ModelMismatchError(f"bundle {str(bundle)!r} was exported from model {manifest.model_id!r} "
                                 f"(weights {manifest.model_sha256[:12]}), but the given model has weights "
                                 f"{digest[:12]} ({model.model_id}); pass the model file it was exported from")
    precision = manifest.graphs["encoder"].precision
    report = verify_graphs(model, bundle, precision, max_seconds=max_seconds)
    for engine in manifest.engines:
        verify_file(bundle / engine.file, engine.sha256, what=f"{engine.graph} engine")
    report["tensorrt"] = verify_engines(model, bundle, manifest.engines, precision, max_seconds=max_seconds)
    require_passed(report, f"bundle {str(bundle)!r}")
    return report
