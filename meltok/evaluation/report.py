"""Evaluation results: per-clip values, per-category summaries, the printed table and the
JSON/CSV files."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from meltok_runtime.io.atomic import atomic_output

from .. import metrics
from . import tones as tone_signals
from .pitch import PITCH_METRICS

SAMPLE_RATE = metrics.SAMPLE_RATE
CATEGORIES = ("music", "speech", "effects")
ALL = "all"
METRICS = metrics.CORE_METRICS + PITCH_METRICS + metrics.OPTIONAL_METRICS + ("kbps", "codebook_usage", "perplexity")
# table columns: (metric, header, format)
COLUMNS = (("mel_distance", "mel", "{:.3f}"), ("mel_distance_p1", "mel_p1", "{:.3f}"),
           ("stft_distance", "stft", "{:.3f}"), ("lsd", "lsd", "{:.3f}"), ("si_sdr", "si_sdr", "{:.2f}"),
           ("buzz_db", "buzz_dB", "{:+.1f}"), ("comb86_db", "comb86", "{:+.1f}"),
           ("comb86_p90_db", "comb86_p90", "{:+.1f}"), ("level_db", "level_dB", "{:+.2f}"),
           ("peak_level_db", "peak_dB", "{:+.1f}"), ("f0_error_cents", "f0_cents", "{:.0f}"),
           ("voicing_agreement", "voicing", "{:.2f}"), ("visqol", "visqol", "{:.2f}"),
           ("pesq_wb", "pesq_wb", "{:.2f}"), ("stoi", "stoi", "{:.3f}"), ("kbps", "kbps", "{:.2f}"),
           ("codebook_usage", "usage*", "{:.3f}"), ("perplexity", "ppl*", "{:.0f}"))
POOLED = ("codebook_usage", "perplexity")
DEFINITIONS = {
    "mel_distance": "DAC multi-scale mel distance with DAC's class defaults (power 2 + magnitude term): windows "
                    "32..2048 (hop w/4, hann, centred), slaney mels 5..320, sum over scales of "
                    "L1(log10(clamp(mel,1e-5)^2)) + L1(mel); lower is better",
    "mel_distance_p1": "DAC multi-scale mel distance as DAC trains with it (conf/base.yml: power 1, no magnitude "
                       "term): sum over the same 7 scales of L1(log10(clamp(mel,1e-5))); lower is better",
    "stft_distance": "multi-resolution STFT (auraloss defaults: fft 1024/2048/512, hop 120/240/50, win "
                     "600/1200/240): spectral convergence + L1 of ln magnitude, mean over resolutions",
    "lsd": "log-spectral distance: n_fft 2048, hop 512, hann; mean over frames of sqrt(mean over bins of "
           "(log10 P_ref - log10 P_est)^2), P = |X|^2 clamped at 1e-8",
    "si_sdr": "scale-invariant SDR in dB (zero-mean)",
    "buzz_db": "frame-rate buzz, output minus input: median over the multiples of 44100/256 = 172.3 Hz of the "
               "Welch power spectrum's peak (+-4 Hz) over its median within +-60 Hz (+-10 Hz left out), in dB",
    "comb86_db": "comb at the multiples of 44100/512 = 86.1 Hz: per multiple, the line prominence as for buzz_db, "
                 "output minus input; median over the multiples, in dB (0 = no more lines than the input)",
    "comb86_odd_db": "comb86_db over the odd multiples of 86.1 Hz only (the lines buzz_db does not look at)",
    "comb86_p90_db": "90th percentile over the 86.1 Hz multiples of the per-line prominence difference "
                     "(target: <= 6 dB)",
    "level_db": "RMS level difference in dB, 20 log10(rms(output) / rms(input)), both without their content "
                "below 20 Hz (a DC offset or rumble is not heard)",
    "peak_level_db": "level at the input's 10 strongest spectral peaks (Welch spectrum as buzz_db, 40 Hz-16 kHz, "
                     "local maxima within +-20 Hz), power within +-2 bins, output over input in dB, mean over "
                     "the peaks",
    "f0_error_cents": "pyin f0 (22.05 kHz, 60-1000 Hz, frames 2048, hop 512) of input and output: median "
                      "|1200 log2(f0_out / f0_in)| over the frames voiced in both (music and speech clips)",
    "voicing_agreement": "pyin frames voiced in both output and input over frames voiced in either (music and speech)",
    "tones": "generated signals at -6 dBFS, 0.5 s left out at each end: tones 110/300/1000/4000 Hz (4 s), a log "
             "sweep 80 Hz-8 kHz (20 s), chords C4+E4+G4, 440+470 Hz, 1000+1060 Hz; level_db: power within +-3 "
             "bins of a one-FFT periodic-Hann spectrum (0.33 Hz bins), output over input; line_hz: the output's "
             "strongest line (parabolic refinement), error_percent re the input frequency; autocorr_512/2048: "
             "normalised autocorrelation of the output; sweep: 8192-sample segments, median level in the band "
             "the sweep crosses and the fraction of segments whose strongest line is within 1%",
    "visqol": "ViSQOL v3 audio mode (visqol-python) at 48 kHz, MOS-LQO",
    "pesq_wb": "wide-band PESQ at 16 kHz (speech clips only)",
    "stoi": "STOI (pystoi; speech clips only)",
    "kbps": "bitrate: bits of the coded form / clip seconds (tokens x log2(codebook size), or an anchor "
            "codec's file size)",
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
    "min", "max", "n"}``, codebook metrics also ``"pooled"``; ``all`` pools every clip) and why
    optional metrics could not run here (``unavailable``)."""

    model: str
    audio_dir: str
    codebook_size: int | None
    clips: list
    summary: dict
    unavailable: dict
    tones: dict | None = None  # tones.tone_suite's results, None when not run

    def targets(self) -> list[dict]:
        """The project's pass/fail targets on this report (``check_targets``)."""
        return check_targets(self.clips, self.tones)

    def table(self) -> str:
        """Plain-text table: one mean and one median row per category, then ``all``."""
        header = ["category", "stat", "clips", "seconds"] + [name for _, name, _ in COLUMNS]
        rows = []
        for category, stats in self.summary.items():
            for stat in ("mean", "median"):
                cells = [category if stat == "mean" else "", stat, str(stats["clips"]) if stat == "mean" else "",
                         f"{stats['seconds']:.1f}" if stat == "mean" else ""]
                for metric, _, fmt in COLUMNS:
                    if metric in POOLED:  # one pooled figure per category, on the mean row
                        value = stats[metric]["pooled"] if stat == "mean" else ""
                    else:
                        value = stats[metric][stat]
                    cells.append(value if value == "" else "-" if value is None else fmt.format(value))
                rows.append(cells)
        lines = format_rows(header, rows, left=2)
        level = self.summary.get(ALL, {}).get("level_db", {})
        notes = ["usage*, ppl*: codebook usage and perplexity of all the codes of the category's clips together"]
        if level.get("n"):
            notes.append(f"level_dB per clip: {level['min']:+.2f} .. {level['max']:+.2f}")
        notes += [f"{metric}: not computed: {reason}" for metric, reason in self.unavailable.items()]
        skipped = sum(1 for clip in self.clips for metric in clip.notes if metric not in self.unavailable)
        if skipped:
            notes.append(f"{skipped} metric value(s) could not be computed for single clips: see the CSV notes column")
        tables = [] if self.tones is None else ["", *tones_table([(self.model, self.tones)])]
        return "\n".join(lines + notes + tables + ["", *target_lines(self.targets())])

    def to_dict(self) -> dict:
        return json_safe({"model": self.model, "audio_dir": self.audio_dir, "sample_rate": SAMPLE_RATE,
                          "codebook_size": self.codebook_size, "definitions": DEFINITIONS,
                          "unavailable": self.unavailable, "summary": self.summary, "tones": self.tones,
                          "targets": self.targets(), "clips": [clip.row() for clip in self.clips]})

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
        """Write ``PREFIX.json`` and ``PREFIX.csv`` (a .json/.csv suffix on ``prefix`` is dropped);
        returns both paths."""
        paths = report_paths(prefix)
        self.write_json(paths[0])
        self.write_csv(paths[1])
        return paths


def check_targets(clips: list, tones: dict | None) -> list[dict]:
    """``[{"target", "passed" (None: not measured), "detail"}]``: every tone and every chord partial
    within 1% at no more than 6 dB below the input; comb86_p90_db at most +6 dB on every clip and tone;
    level within 2 dB on every clip."""
    checks = []
    for name, partials in (("tones", tones and tones["tones"]),
                           ("chord partials", tones and [dict(p, chord=c) for c, ps in tones["chords"].items()
                                                         for p in ps])):
        failed = [p for p in partials or [] if not tone_signals.kept(p)]
        detail = ", ".join(f"{p['hz']:g} Hz: {p['level_db']:+.1f} dB, line {p['line_hz']:.1f} Hz "
                           f"({p['error_percent']:+.2f}%)" for p in failed)
        checks.append({"target": f"{name} within {tone_signals.MAX_ERROR_PERCENT:g}% at no more than "
                                 f"{tone_signals.MAX_LOSS_DB:g} dB below the input",
                       "passed": None if partials is None else not failed, "detail": detail})
    combs = [(c.path, c.values.get("comb86_p90_db")) for c in clips]
    combs += [(f"{t['hz']:g} Hz tone", t["comb86_p90_db"]) for t in (tones or {}).get("tones", [])]
    combs = [(where, v) for where, v in combs if v is not None and math.isfinite(v)]
    worst = max(combs, key=lambda item: item[1], default=None)
    checks.append({"target": "comb at most +6 dB at the 86.1 Hz multiples (comb86_p90, every clip and tone)",
                   "passed": None if worst is None else worst[1] <= 6.0,
                   "detail": "" if worst is None else f"largest {worst[1]:+.1f} dB ({worst[0]})"})
    levels = [c.values.get("level_db") for c in clips]
    levels = [v for v in levels if v is not None and not math.isnan(v)]
    checks.append({"target": "level within 2 dB on every clip", "passed": all(abs(v) <= 2.0 for v in levels)
                   if levels else None, "detail": f"{min(levels):+.2f} .. {max(levels):+.2f} dB" if levels else ""})
    return checks


def target_lines(checks: list[dict], name: str = "") -> list[str]:
    """One line per target: ``PASS``/``FAIL``/``n/a``, the target and what failed."""
    lines = []
    for check in checks:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[check["passed"]]
        detail = f": {check['detail']}" if check["detail"] else ""
        lines.append(f"{name + '  ' if name else ''}{verdict}  {check['target']}{detail}")
    return lines


def tones_table(entries: list) -> list[str]:
    """Aligned lines, one row per ``(codec name, tone results)``: per tone the level at its frequency
    (dB re input) and the error of the output's strongest line (%), the sweep, the weakest chord
    partial, the median 86.1 Hz comb and the autocorrelation at lag 512 of the steady tones."""
    header = ["codec"]
    rows = []
    for name, tones in entries:
        cells = [name]
        titles = []
        for t in tones["tones"]:
            titles += [f"{t['hz']:g}Hz_dB", "err%"]
            cells += [f"{t['level_db']:+.1f}", f"{t['error_percent']:+.2f}"]
        weakest = min((p for ps in tones["chords"].values() for p in ps), key=lambda p: p["level_db"])
        titles += ["sweep_dB", "sweep_1%", "chord_min_dB", "comb86", "ac512"]
        cells += [f"{tones['sweep']['level_db']:+.1f}", f"{tones['sweep']['within_percent']:.2f}",
                  f"{weakest['level_db']:+.1f}", f"{np.median([t['comb86_db'] for t in tones['tones']]):+.1f}",
                  f"{np.median([t['autocorr_512'] for t in tones['tones']]):+.2f}"]
        header = ["codec"] + titles
        rows.append(cells)
    notes = ["tones: level at the input frequency (dB re input) and error of the strongest output line (%); "
             "sweep_1%: fraction of sweep segments within 1%; chord_min_dB: weakest chord partial; comb86, ac512: "
             "medians over the tones (input's ac512: -0.17, -0.99, -0.77, -0.93)"]
    return format_rows(header, rows) + notes


def report_paths(prefix) -> tuple[Path, Path]:
    """``(PREFIX.json, PREFIX.csv)``; a .json or .csv suffix on ``prefix`` is dropped first."""
    prefix = Path(prefix)
    if prefix.suffix.lower() in (".json", ".csv"):
        prefix = prefix.with_suffix("")
    return prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".csv")


def format_rows(header: list, rows: list, left: int = 1) -> list[str]:
    """Aligned text lines: the first ``left`` columns left-aligned, the others right-aligned,
    a rule under the header."""
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _finite(values) -> list:
    return [v for v in values if v is not None and math.isfinite(v)]


def summarize(clips: list) -> dict:
    """``{category: {"clips", "seconds", metric: {"mean", "median", "min", "max", "n"}}}``;
    categories in the order music, speech, effects, others, then ``all``. Statistics skip
    missing and non-finite values (an infinite SI-SDR of a perfect clip, reported only when every
    value is infinite); codebook usage and perplexity also have ``pooled``: computed from all the
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
                stats[metric] = {"mean": float(np.mean(finite)), "median": float(np.median(finite)),
                                 "min": float(np.min(finite)), "max": float(np.max(finite)), "n": len(finite)}
            elif infinite:
                stats[metric] = {"mean": infinite[0], "median": infinite[0], "min": infinite[0],
                                 "max": infinite[0], "n": len(infinite)}
            else:
                stats[metric] = {"mean": None, "median": None, "min": None, "max": None, "n": 0}
        histograms = [c.histogram for c in members if c.histogram is not None]
        pooled = metrics.usage_from_histogram(np.sum(histograms, axis=0)) if histograms else {}
        for metric in POOLED:
            stats[metric]["pooled"] = pooled.get(metric)
        summary[name] = stats
    return summary


def json_safe(value):
    """``value`` with numpy scalars as Python numbers and non-finite floats as ``"inf"``/``"-inf"``/None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else (None if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, np.integer):
        return int(value)
    return value
