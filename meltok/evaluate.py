"""Quality evaluation of a codec on a folder of audio: per-clip metrics, per-category summaries,
a printed table, JSON/CSV reports and spectrogram plots.

>>> report = evaluate(MelTok.load("model.safetensors"), "audio/", plot_dir="plots/")
>>> print(report.table())
>>> report.write("results/eval")          # results/eval.json, results/eval.csv

The codec is anything with ``encode(audio [B, N] float32, sample_rate) -> tokens`` and
``decode(tokens, num_samples=N) -> [B, N]`` (``meltok.MelTok``, ``meltok_runtime.Codec``), or a
path: a ``.safetensors`` model file or an export bundle folder (``manifest.json``). Metrics are
those of ``meltok.metrics``; PESQ-WB and STOI are computed for speech clips only.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import re
import time
from pathlib import Path

import click
import numpy as np

from meltok_runtime.atomic import atomic_output
from meltok_runtime.cli_support import user_errors
from meltok_runtime.errors import AudioInputError, MeltokError

from . import metrics

log = logging.getLogger("meltok")

SAMPLE_RATE = metrics.SAMPLE_RATE
CATEGORIES = ("music", "speech", "effects")
_CATEGORY_WORDS = {"music": "music", "song": "music", "speech": "speech", "voice": "speech", "voices": "speech",
                   "effects": "effects", "effect": "effects", "sfx": "effects", "sounds": "effects"}
OTHER = "other"
ALL = "all"
METRICS = metrics.CORE_METRICS + metrics.OPTIONAL_METRICS + ("codebook_usage", "perplexity")
# table columns: (metric, header, format)
_COLUMNS = (("mel_distance", "mel", "{:.3f}"), ("stft_distance", "stft", "{:.3f}"), ("lsd", "lsd", "{:.3f}"),
            ("si_sdr", "si_sdr", "{:.2f}"), ("visqol", "visqol", "{:.2f}"), ("pesq_wb", "pesq_wb", "{:.2f}"),
            ("stoi", "stoi", "{:.3f}"), ("codebook_usage", "usage*", "{:.3f}"), ("perplexity", "ppl*", "{:.0f}"))
_POOLED = ("codebook_usage", "perplexity")
DEFINITIONS = {
    "mel_distance": "DAC multi-scale mel distance: windows 32..2048 (hop w/4, hann, centred), slaney mels "
                    "5..320, sum over scales of L1(log10(clamp(mel,1e-5)^2)) + L1(mel); lower is better",
    "stft_distance": "multi-resolution STFT (auraloss defaults: fft 1024/2048/512, hop 120/240/50, win "
                     "600/1200/240): spectral convergence + L1 of ln magnitude, mean over resolutions",
    "lsd": "log-spectral distance: n_fft 2048, hop 512, hann; mean over frames of sqrt(mean over bins of "
           "(log10 P_ref - log10 P_est)^2), P = |X|^2 clamped at 1e-8",
    "si_sdr": "scale-invariant SDR in dB (zero-mean)",
    "visqol": "ViSQOL v3 audio mode (visqol-python) at 48 kHz, MOS-LQO",
    "pesq_wb": "wide-band PESQ at 16 kHz (speech clips only)",
    "stoi": "STOI (pystoi; speech clips only)",
    "codebook_usage": "distinct codes / codebook size (summary rows: pooled over the clips)",
    "perplexity": "exp(entropy) of the code histogram (summary rows: pooled over the clips)",
}


@dataclasses.dataclass
class ClipResult:
    """Metrics of one clip: ``values`` maps each name of ``METRICS`` to a float or None."""

    path: str
    category: str
    seconds: float
    codec_seconds: float
    values: dict
    notes: dict = dataclasses.field(default_factory=dict)  # metric -> why it is None for this clip
    histogram: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def row(self) -> dict:
        return {"path": self.path, "category": self.category, "seconds": round(self.seconds, 3),
                "codec_seconds": round(self.codec_seconds, 3), **{m: self.values.get(m) for m in METRICS},
                "notes": "; ".join(f"{m}: {why}" for m, why in self.notes.items())}


@dataclasses.dataclass
class Report:
    """Per-clip results, per-category summaries (``summary[category][metric] = {"mean", "median",
    "n"}``, codebook metrics also ``"pooled"``; ``all`` pools every clip) and why optional metrics
    could not run here (``unavailable``)."""

    model: str
    audio_dir: str
    codebook_size: int | None
    clips: list
    summary: dict
    unavailable: dict

    def table(self) -> str:
        """Plain-text table: one mean and one median row per category, then ``all``."""
        header = ["category", "stat", "clips", "seconds"] + [name for _, name, _ in _COLUMNS]
        rows = []
        for category, stats in self.summary.items():
            for stat in ("mean", "median"):
                cells = [category if stat == "mean" else "", stat, str(stats["clips"]) if stat == "mean" else "",
                         f"{stats['seconds']:.1f}" if stat == "mean" else ""]
                for metric, _, fmt in _COLUMNS:
                    if metric in _POOLED:  # one pooled figure per category, on the mean row
                        value = stats[metric]["pooled"] if stat == "mean" else ""
                    else:
                        value = stats[metric][stat]
                    cells.append(value if value == "" else "-" if value is None else fmt.format(value))
                rows.append(cells)
        widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in [header] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        notes = ["usage*, ppl*: codebook usage and perplexity of all the codes of the category's clips together"]
        notes += [f"{metric}: not computed: {reason}" for metric, reason in self.unavailable.items()]
        skipped = sum(1 for clip in self.clips for metric in clip.notes if metric not in self.unavailable)
        if skipped:
            notes.append(f"{skipped} metric value(s) could not be computed for single clips: see the CSV notes column")
        return "\n".join(lines + notes)

    def to_dict(self) -> dict:
        return _json_safe({"model": self.model, "audio_dir": self.audio_dir, "sample_rate": SAMPLE_RATE,
                           "codebook_size": self.codebook_size, "definitions": DEFINITIONS,
                           "unavailable": self.unavailable, "summary": self.summary,
                           "clips": [clip.row() for clip in self.clips]})

    def write_json(self, path) -> None:
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def write_csv(self, path) -> None:
        """One row per clip (metrics as columns; empty cell: not computed)."""
        with atomic_output(path) as tmp:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(self.clips[0].row()) if self.clips else ["path"])
                writer.writeheader()
                for clip in self.clips:
                    writer.writerow({k: "" if v is None else v for k, v in clip.row().items()})

    def write(self, prefix) -> tuple[Path, Path]:
        """Write ``PREFIX.json`` and ``PREFIX.csv`` (a .json/.csv suffix on ``prefix`` is dropped)."""
        prefix = Path(prefix)
        if prefix.suffix.lower() in (".json", ".csv"):
            prefix = prefix.with_suffix("")
        paths = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".csv")
        self.write_json(paths[0])
        self.write_csv(paths[1])
        return paths


# ---------------------------------------------------------------------- inputs
def find_audio(audio_dir) -> list[Path]:
    """Every file under ``audio_dir`` (recursively, hidden files excluded) that soundfile reads, sorted."""
    import soundfile as sf

    root = Path(audio_dir)
    if not root.is_dir():
        raise AudioInputError(f"{str(root)!r} is not a folder; expected a folder of audio files")
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            sf.info(str(path))
        except (sf.SoundFileError, RuntimeError, OSError):
            log.info("skipping %s: not an audio file soundfile reads", path)
            continue
        found.append(path)
    if not found:
        raise AudioInputError(f"no audio file that soundfile reads was found under {str(root)!r}; "
                              "expected WAV/FLAC/OGG files (in subfolders music/, speech/, effects/ if you want "
                              "per-category figures)")
    return found


def clip_category(relative: Path, categories=None) -> str:
    """The category of a clip: ``categories[path]`` (relative posix path, file name or stem),
    else the first folder under the audio folder, else a category word in the file name
    (``long_music.ogg`` -> music), else ``other``."""
    relative = Path(relative)
    if categories:
        for key in (relative.as_posix(), relative.name, relative.stem):
            if key in categories:
                return str(categories[key])
    if len(relative.parts) > 1:
        return relative.parts[0]
    for word in re.findall(r"[a-z]+", relative.stem.lower()):
        if word in _CATEGORY_WORDS:
            return _CATEGORY_WORDS[word]
    return OTHER


def load_clip(path, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 ``[N]`` at 44.1 kHz (soxr), at most ``max_seconds`` long."""
    from meltok_runtime.audio import load_audio, mixdown, prepare_audio

    samples, rate = load_audio(path)
    audio, _ = prepare_audio(mixdown(samples), rate, SAMPLE_RATE)
    audio = audio[0]
    if max_seconds is not None:
        audio = audio[:max(1, int(round(max_seconds * SAMPLE_RATE)))]
    return np.ascontiguousarray(audio)


@contextlib.contextmanager
def open_codec(codec_like, *, device: str = "cpu"):
    """Yield a codec: ``codec_like`` itself, a MelTok from a model file, or a runtime Codec from
    a bundle folder (closed on exit)."""
    if not isinstance(codec_like, (str, Path)):
        if not (callable(getattr(codec_like, "encode", None)) and callable(getattr(codec_like, "decode", None))):
            raise TypeError(f"evaluate got {type(codec_like).__name__}; expected an object with encode/decode "
                            "(MelTok, meltok_runtime.Codec), a model file or a bundle folder")
        yield codec_like
        return
    from .codec import MelTok
    from .loaders import open_codec as open_model

    with open_model(MelTok, codec_like, device=device) as codec:
        yield codec


def _describe(codec_like) -> str:
    if isinstance(codec_like, (str, Path)):
        return str(codec_like)
    model_id = getattr(codec_like, "model_id", None)
    return f"{type(codec_like).__name__}({model_id})" if model_id else type(codec_like).__name__


# ---------------------------------------------------------------------- evaluation
def evaluate(codec_like, audio_dir, *, categories=None, plot_dir=None, max_seconds: float | None = None,
             max_plots: int = 4, use_visqol: bool = True, output=None, device: str = "cpu") -> Report:
    """Encode and decode every audio file under ``audio_dir``, score each reconstruction and
    summarise per category (see the module docstring).

    ``categories``: optional ``{relative path, file name or stem: category}``; otherwise the
    first folder name (or a category word in the file name). ``plot_dir``: write original vs
    reconstructed log-mel PNGs for up to ``max_plots`` clips (the first of each category first).
    ``max_seconds``: evaluate only the start of each clip. ``output``: also write
    ``OUTPUT.json`` and ``OUTPUT.csv``.
    """
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds={max_seconds}; expected a positive number of seconds or None")
    if plot_dir is not None:
        _require_matplotlib()
    files = find_audio(audio_dir)
    root = Path(audio_dir)
    unavailable = {}
    status = metrics.optional_metric_status(("pesq_wb", "stoi") + (("visqol",) if use_visqol else ()))
    if not use_visqol:
        status["visqol"] = unavailable["visqol"] = "disabled"
    elif status["visqol"]:
        unavailable["visqol"] = status["visqol"]
    clips, plotted = [], []
    with open_codec(codec_like, device=device) as codec:
        codebook_size = getattr(codec, "codebook_size", None)
        for index, path in enumerate(files):
            relative = path.relative_to(root)
            clip, reference, estimate = _evaluate_clip(
                codec, path, relative, clip_category(relative, categories), max_seconds=max_seconds,
                codebook_size=codebook_size, use_visqol=use_visqol and not status["visqol"], status=status)
            clips.append(clip)
            log.info("[%d/%d] %s (%s): mel distance %.3f", index + 1, len(files), clip.path, clip.category,
                     clip.values["mel_distance"])
            if plot_dir is not None:
                plotted = _keep_for_plots(plotted + [(clip, reference, estimate)], max_plots)
    for metric in ("pesq_wb", "stoi"):
        if status[metric] and any(clip.category == "speech" for clip in clips):
            unavailable[metric] = status[metric]
    report = Report(_describe(codec_like), str(audio_dir), codebook_size, clips, summarize(clips), unavailable)
    if plot_dir is not None:
        Path(plot_dir).mkdir(parents=True, exist_ok=True)
        for number, (clip, reference, estimate) in enumerate(plotted):
            plot_clip(Path(plot_dir) / f"{number:02d}_{_safe_name(clip.path)}.png", reference, estimate,
                      title=f"{clip.path} ({clip.category}): mel distance {clip.values['mel_distance']:.3f}")
    if output is not None:
        report.write(output)
    return report


def _evaluate_clip(codec, path, relative, category, *, max_seconds, codebook_size, use_visqol, status):
    """Encode, decode and score one file: ``(ClipResult, reference, estimate)``."""
    reference = load_clip(path, max_seconds)
    start = time.perf_counter()
    tokens = codec.encode(reference[None], SAMPLE_RATE)
    decoded = codec.decode(tokens, num_samples=reference.size)
    codec_seconds = time.perf_counter() - start
    estimate = np.asarray(_to_numpy(decoded), dtype=np.float32).reshape(-1)[:reference.size]
    values, reasons = metrics.clip_metrics(reference, estimate, speech=category == "speech", use_visqol=use_visqol)
    for metric, reason in reasons.items():
        if not status.get(metric):  # a package that is missing is reported once, in Report.unavailable
            log.warning("%s: %s not computed: %s", relative, metric, reason)
    histogram = None
    values.update(codebook_usage=None, perplexity=None)
    if codebook_size:
        histogram = metrics.code_histogram(_to_numpy(tokens), int(codebook_size))
        usage = metrics.usage_from_histogram(histogram)
        values.update(codebook_usage=usage["codebook_usage"], perplexity=usage["perplexity"])
    clip = ClipResult(relative.as_posix(), category, reference.size / SAMPLE_RATE, codec_seconds, values, reasons,
                      histogram)
    return clip, reference, estimate


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _keep_for_plots(plotted: list, limit: int) -> list:
    """The first clip of each category, then further clips in order, at most ``limit``."""
    firsts, rest, seen = [], [], set()
    for item in plotted:
        (rest if item[0].category in seen else firsts).append(item)
        seen.add(item[0].category)
    return (firsts + rest)[:max(0, limit)]


def _finite(values) -> list:
    return [v for v in values if v is not None and math.isfinite(v)]


def summarize(clips: list) -> dict:
    """``{category: {"clips", "seconds", metric: {"mean", "median", "n"}}}``; categories in the
    order music, speech, effects, others, then ``all``. Means and medians skip missing and
    non-finite values (an infinite SI-SDR of a perfect clip, reported only when every value is
    infinite); codebook usage and perplexity also have ``pooled``: computed from all the
    category's codes together."""
    groups = {}
    for clip in clips:
        groups.setdefault(clip.category, []).append(clip)
    order = [c for c in CATEGORIES if c in groups] + sorted(c for c in groups if c not in CATEGORIES)
    summary = {}
    for name, members in [(c, groups[c]) for c in order] + [(ALL, clips)]:
        stats = {"clips": len(members), "seconds": sum(c.seconds for c in members)}
        for metric in METRICS:
            values = [c.values.get(metric) for c in members]
            finite = _finite(values)
            infinite = [v for v in values if v is not None and math.isinf(v)]
            if finite:
                stats[metric] = {"mean": float(np.mean(finite)), "median": float(np.median(finite)), "n": len(finite)}
            elif infinite:
                stats[metric] = {"mean": infinite[0], "median": infinite[0], "n": len(infinite)}
            else:
                stats[metric] = {"mean": None, "median": None, "n": 0}
        histograms = [c.histogram for c in members if c.histogram is not None]
        pooled = metrics.usage_from_histogram(np.sum(histograms, axis=0)) if histograms else {}
        for metric in _POOLED:
            stats[metric]["pooled"] = pooled.get(metric)
        summary[name] = stats
    return summary


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else (None if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------------- plots
def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MeltokError("plots need matplotlib, which does not import here; install it with "
                          "`pip install matplotlib` (or `pip install meltok[train]`), or leave out the plot folder") \
            from None


def _safe_name(relative: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", relative)[:120]


def plot_clip(path, reference, estimate, *, title: str = "") -> None:
    """Write a PNG of the reference and estimate log-mel spectrograms (same colour scale)."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mels = [metrics.log_mel_spectrogram(x) for x in (reference, estimate)]
    seconds = len(reference) / SAMPLE_RATE
    vmax = float(mels[0].max())
    figure = Figure(figsize=(9, 5.5), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 1, sharex=True)
    for axis, mel, label in zip(axes, mels, ("original", "reconstructed")):
        image = axis.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=vmax - 5.0, vmax=vmax,
                            extent=(0.0, seconds, 0, mel.shape[0]))
        axis.set_ylabel(f"{label}\nmel band (of {mel.shape[0]})")
        figure.colorbar(image, ax=axis, label="log10 magnitude")
    axes[-1].set_xlabel("time (s)")
    if title:
        figure.suptitle(title)
    with atomic_output(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")


# ---------------------------------------------------------------------- CLI
@click.command(name="eval")
@click.argument("model", type=click.Path(exists=True))
@click.argument("audio_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "report_prefix", type=click.Path(dir_okay=False), default=None,
              help="Write REPORT_PREFIX.json and REPORT_PREFIX.csv.")
@click.option("--plots", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for PNG plots of original vs reconstructed mel spectrograms (a few clips).")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Evaluate only the first S seconds of each clip.")
@click.option("--no-visqol", is_flag=True, help="Skip ViSQOL (the slowest metric).")
@click.option("--device", default="cpu", show_default=True, help="torch device for a model file, e.g. cuda.")
@user_errors
def eval_command(model, audio_dir, report_prefix, plot_dir, max_seconds, no_visqol, device):
    """Evaluate MODEL (.safetensors model file or export bundle folder) on the audio under AUDIO_DIR.

    Categories (music/speech/effects) come from the first folder under AUDIO_DIR.
    """
    report = evaluate(model, audio_dir, plot_dir=plot_dir, max_seconds=max_seconds, use_visqol=not no_visqol,
                      output=report_prefix, device=device)
    click.echo(report.table())
    if report_prefix:
        click.echo(f"wrote {report_prefix}.json and {report_prefix}.csv")
