"""Run an evaluation: code every clip of a folder, score it, summarise, plot and write.

A *coder* is ``code(reference [N] float32 at 44.1 kHz) -> Coded``: the reconstruction, the bits
it took and (for a token codec) the tokens. ``evaluate`` builds one from a codec (anything with
``encode(audio [B, N], sample_rate) -> tokens`` and ``decode(tokens, num_samples=N) -> [B, N]``:
``meltok.MelTok``, ``meltok_runtime.Codec``) or a path; ``anchors`` builds them from classic codecs.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from meltok_runtime.errors import MetricUnavailable

from .. import metrics
from .inputs import clip_category, describe, find_audio, load_clip, open_codec
from .pitch import PITCH_METRICS, pitch_metrics
from .plots import keep_for_plots, plot_clip, plot_spectrograms, require_matplotlib, safe_name
from .report import SAMPLE_RATE, ClipResult, Report, summarize
from .tones import sweep, tone_suite

log = logging.getLogger("meltok")

PITCH_CATEGORIES = ("music", "speech")


@dataclasses.dataclass
class Coded:
    """One clip through a coder: ``audio`` ``[N]`` float32, ``bits`` of the coded form (None if
    unknown), ``tokens`` (token codecs only, for codebook statistics)."""

    audio: np.ndarray
    bits: float | None = None
    tokens: np.ndarray | None = None


Coder = Callable[[np.ndarray], Coded]


def token_coder(codec) -> Coder:
    """The coder of a token codec: encode, decode, ``tokens.size * log2(codebook_size)`` bits."""
    codebook_size = getattr(codec, "codebook_size", None)

    def code(reference: np.ndarray) -> Coded:
        tokens = to_numpy(codec.encode(reference[None], SAMPLE_RATE))
        decoded = to_numpy(codec.decode(tokens, num_samples=reference.size))
        bits = tokens.size * math.log2(codebook_size) if codebook_size else None
        return Coded(np.asarray(decoded, dtype=np.float32).reshape(-1), bits, tokens)

    return code


def evaluate(codec_like, audio_dir, *, categories=None, plot_dir=None, max_seconds: float | None = None,
             max_plots: int = 4, use_visqol: bool = True, tones: bool = True, output=None,
             device: str = "cpu") -> Report:
    """Encode and decode every audio file under ``audio_dir``, score each reconstruction and
    summarise per category.

    ``categories``: optional ``{relative path, file name or stem: category}``; otherwise the
    first folder name (or a category word in the file name). ``plot_dir``: write original vs
    reconstructed log-mel PNGs for up to ``max_plots`` clips (the first of each category first).
    ``max_seconds``: evaluate only the start of each clip. ``tones``: also run the generated tones,
    sweep and chords of ``tones.tone_suite``. ``output``: also write ``OUTPUT.json`` and ``OUTPUT.csv``.
    """
    with open_codec(codec_like, device=device) as codec:
        return score_folder(token_coder(codec), audio_dir, name=describe(codec_like),
                            codebook_size=getattr(codec, "codebook_size", None), categories=categories,
                            plot_dir=plot_dir, max_seconds=max_seconds, max_plots=max_plots,
                            use_visqol=use_visqol, tones=tones, output=output)


def write_spectrograms(codec_like, folder, files=(), *, device: str = "cpu") -> list[Path]:
    """Code the generated sine sweep and each audio file of ``files`` with the codec and write
    ``FOLDER/sweep.png`` (0-8 kHz) and ``FOLDER/STEM.png`` (0-4 kHz, where voices and most notes have their
    harmonics): input beside output (``plots.plot_spectrograms``)."""
    require_matplotlib()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with open_codec(codec_like, device=device) as codec:
        code = token_coder(codec)
        inputs = [("sweep", "log sine sweep 80 Hz - 8 kHz", sweep(), 8000.0)]
        inputs += [(Path(f).stem, Path(f).name, load_clip(f), 4000.0) for f in files]
        for stem, label, reference, max_hz in inputs:
            estimate = code(reference).audio[:reference.size]
            written.append(folder / f"{safe_name(stem)}.png")
            plot_spectrograms(written[-1], reference, estimate, max_hz=max_hz,
                              title=f"{label} through {describe(codec_like)}")
    return written


def score_folder(code: Coder, audio_dir, *, name: str, codebook_size: int | None = None, categories=None,
                 plot_dir=None, max_seconds: float | None = None, max_plots: int = 4, use_visqol: bool = True,
                 tones: bool = True, output=None) -> Report:
    """Run ``code`` on every clip under ``audio_dir`` and score it (arguments as ``evaluate``)."""
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds={max_seconds}; expected a positive number of seconds or None")
    if plot_dir is not None:
        require_matplotlib()
    files = find_audio(audio_dir)
    root = Path(audio_dir)
    unavailable = {}
    status = metrics.optional_metric_status(("pesq_wb", "stoi") + (("visqol",) if use_visqol else ()))
    if not use_visqol:
        status["visqol"] = unavailable["visqol"] = "disabled"
    elif status["visqol"]:
        unavailable["visqol"] = status["visqol"]
    clips, plotted = [], []
    for index, path in enumerate(files):
        relative = path.relative_to(root)
        reference = load_clip(path, max_seconds)
        start = time.perf_counter()
        coded = code(reference)
        clip, estimate = _score_clip(relative, clip_category(relative, categories), reference, coded,
                                     time.perf_counter() - start, codebook_size=codebook_size,
                                     use_visqol=use_visqol and not status["visqol"], status=status)
        clips.append(clip)
        log.info("[%d/%d] %s %s (%s): mel distance %.3f", index + 1, len(files), name, clip.path, clip.category,
                 clip.values["mel_distance"])
        if plot_dir is not None:
            plotted = keep_for_plots(plotted + [(clip, reference, estimate)], max_plots)
    for metric in ("pesq_wb", "stoi"):
        if status[metric] and any(clip.category == "speech" for clip in clips):
            unavailable[metric] = status[metric]
    tone_results = None
    if tones:
        log.info("%s: tones, sweep and chords", name)
        tone_results = tone_suite(code)
    report = Report(name, str(audio_dir), codebook_size, clips, summarize(clips), unavailable, tone_results)
    if plot_dir is not None:
        Path(plot_dir).mkdir(parents=True, exist_ok=True)
        for number, (clip, reference, estimate) in enumerate(plotted):
            plot_clip(Path(plot_dir) / f"{number:02d}_{safe_name(clip.path)}.png", reference, estimate,
                      title=f"{clip.path} ({clip.category}): mel distance {clip.values['mel_distance']:.3f}")
    if output is not None:
        report.write(output)
    return report


def _score_clip(relative, category, reference, coded: Coded, codec_seconds, *, codebook_size, use_visqol,
                status):
    """Score one coded clip: ``(ClipResult, estimate [N])``."""
    estimate = np.asarray(coded.audio, dtype=np.float32).reshape(-1)[:reference.size]
    values, reasons = metrics.clip_metrics(reference, estimate, speech=category == "speech", use_visqol=use_visqol)
    values.update(dict.fromkeys(PITCH_METRICS))
    if category in PITCH_CATEGORIES:
        try:
            values.update(pitch_metrics(reference, estimate))
        except MetricUnavailable as error:
            reasons["f0_error_cents"] = str(error)
    for metric, reason in reasons.items():
        if not status.get(metric):  # a package that is missing is reported once, in Report.unavailable
            log.warning("%s: %s not computed: %s", relative, metric, reason)
    seconds = reference.size / SAMPLE_RATE
    values["kbps"] = None if coded.bits is None else coded.bits / seconds / 1000.0
    histogram = None
    values.update(codebook_usage=None, perplexity=None)
    if codebook_size and coded.tokens is not None:
        histogram = metrics.code_histogram(coded.tokens, int(codebook_size))
        usage = metrics.usage_from_histogram(histogram)
        values.update(codebook_usage=usage["codebook_usage"], perplexity=usage["perplexity"])
    clip = ClipResult(relative.as_posix(), category, seconds, codec_seconds, values, reasons, histogram)
    return clip, estimate


def to_numpy(array) -> np.ndarray:
    """A torch tensor or array-like as a numpy array."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)
