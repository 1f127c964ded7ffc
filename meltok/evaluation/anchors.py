"""Anchors: classic codecs and an ideal-envelope reference scored on the same clips as a model.

Each classic codec is a pair of command-line tools from Debian packages (opus-tools, vorbis-tools,
lame): the clip is written as 16-bit WAV, encoded, decoded, read back (mixed to mono, resampled
to 44.1 kHz with soxr), and time-aligned to the input by the lag of the cross-correlation peak
(codec delays differ: Opus pre-skip, MP3 encoder delay and resampling filters). The bitrate is
the encoded file's size over the clip's duration. A codec whose tools are missing is skipped
with a one-line note.

``mel96+GL`` is what a perfect tokenizer with naive phase would give: the input's own 96-band
log-mel of the MelTok front end, mapped back to a linear spectrum (least squares, clamped at 0)
and given a phase by fast Griffin-Lim (momentum 0.99, ``GRIFFIN_LIM_ITERATIONS`` iterations).
``mel96+inversion`` is the same log-mel through the runtime's ``MelInverter`` (what a ``mel_inversion``
model with a perfect tokenizer and decoder would give).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from meltok_runtime.io.atomic import atomic_output

from ..errors import AnchorError
from ..metrics import SAMPLE_RATE
from .report import ALL, format_rows, json_safe, report_paths, target_lines, tones_table
from .run import Coded, Coder, score_folder

log = logging.getLogger("meltok")

MAX_DELAY_SECONDS = 0.1
GRIFFIN_LIM_ITERATIONS = 32


@dataclasses.dataclass(frozen=True)
class ToolCodec:
    """A classic codec run through its command-line tools: ``encode`` and ``decode`` are argument
    lists with ``{input}`` and ``{output}`` placeholders."""

    name: str
    suffix: str
    encode: tuple[str, ...]
    decode: tuple[str, ...]

    def missing_tools(self) -> list[str]:
        return sorted({args[0] for args in (self.encode, self.decode) if shutil.which(args[0]) is None})


CLASSIC_CODECS = (
    ToolCodec("opus 6 kbps", ".opus", ("opusenc", "--quiet", "--bitrate", "6", "{input}", "{output}"),
              ("opusdec", "--quiet", "--rate", "44100", "{input}", "{output}")),
    ToolCodec("opus 12 kbps", ".opus", ("opusenc", "--quiet", "--bitrate", "12", "{input}", "{output}"),
              ("opusdec", "--quiet", "--rate", "44100", "{input}", "{output}")),
    ToolCodec("vorbis q-1", ".ogg", ("oggenc", "--quiet", "-q", "-1", "-o", "{output}", "{input}"),
              ("oggdec", "--quiet", "-o", "{output}", "{input}")),
    ToolCodec("mp3 16 kbps", ".mp3", ("lame", "--quiet", "-b", "16", "{input}", "{output}"),
              ("lame", "--quiet", "--decode", "{input}", "{output}")),
)


# ------------------------------------------------------------------ alignment
def measure_delay(reference: np.ndarray, decoded: np.ndarray, max_lag: int) -> int:
    """The lag ``d`` in ``[-max_lag, max_lag]`` that maximises the cross-correlation
    ``sum_n reference[n] * decoded[n + d]`` (FFT): ``decoded`` is ``reference`` delayed by ``d``."""
    size = reference.size + decoded.size
    n_fft = 1 << (size - 1).bit_length()
    spectrum = np.fft.rfft(decoded.astype(np.float64), n_fft) * np.conj(np.fft.rfft(reference.astype(np.float64),
                                                                                     n_fft))
    correlation = np.fft.irfft(spectrum, n_fft)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([correlation[:max_lag + 1], correlation[n_fft - max_lag:]])
    return int(lags[int(np.argmax(values))])


def undo_delay(decoded: np.ndarray, delay: int, length: int) -> np.ndarray:
    """``decoded`` advanced by ``delay`` samples, cut or zero-padded to ``length``."""
    shifted = decoded[delay:] if delay >= 0 else np.concatenate([np.zeros(-delay, decoded.dtype), decoded])
    out = np.zeros(length, np.float32)
    out[:min(length, shifted.size)] = shifted[:length]
    return out


# ------------------------------------------------------------------ coders
def tool_coder(codec: ToolCodec, delays: list) -> Coder:
    """The coder of a classic codec; each clip's measured delay is appended to ``delays``."""
    import soundfile as sf

    from meltok_runtime.io.audio import load_mono

    def code(reference: np.ndarray) -> Coded:
        with tempfile.TemporaryDirectory(prefix="meltok-anchor-") as folder:
            paths = {name: str(Path(folder) / name) for name in ("in.wav", "coded" + codec.suffix, "out.wav")}
            sf.write(paths["in.wav"], np.clip(reference, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
            _run(codec.encode, paths["in.wav"], paths["coded" + codec.suffix])
            _run(codec.decode, paths["coded" + codec.suffix], paths["out.wav"])
            bits = 8.0 * Path(paths["coded" + codec.suffix]).stat().st_size
            decoded = load_mono(paths["out.wav"], SAMPLE_RATE).samples
        delay = measure_delay(reference, decoded, int(MAX_DELAY_SECONDS * SAMPLE_RATE))
        delays.append(delay)
        return Coded(undo_delay(decoded, delay, reference.size), bits)

    return code


def _run(template, source: str, target: str) -> None:
    command = [source if arg == "{input}" else target if arg == "{output}" else arg for arg in template]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise AnchorError(f"`{' '.join(command)}` failed (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()[:300]}")


def mel_griffin_lim_coder(iterations: int = GRIFFIN_LIM_ITERATIONS) -> Coder:
    """The ``mel96+GL`` reference: the true MelTok log-mel inverted with Griffin-Lim (no bits)."""
    import torch

    from ..config import FrontendConfig
    from ..frontend import MelFrontend

    config = FrontendConfig()
    frontend = MelFrontend(config)
    inverse = torch.linalg.pinv(frontend.filters.double()).float()  # [freq, mels]
    window = torch.hann_window(config.n_fft)

    def stft(x):
        return torch.stft(x, config.n_fft, config.hop_length, window=window, center=True, return_complex=True)

    def code(reference: np.ndarray) -> Coded:
        audio = torch.from_numpy(reference)[None]
        with torch.no_grad():
            magnitude = torch.clamp(inverse @ torch.exp(frontend(audio)), min=0.0)
            generator = torch.Generator().manual_seed(0)
            angles = torch.polar(torch.ones_like(magnitude), 2 * torch.pi * torch.rand(magnitude.shape,
                                                                                       generator=generator))
            previous = torch.zeros_like(angles)
            for _ in range(iterations):
                estimate = torch.istft(magnitude * angles, config.n_fft, config.hop_length, window=window,
                                       length=reference.size)
                rebuilt = stft(estimate)
                accelerated = rebuilt - 0.99 * previous
                previous = rebuilt
                angles = accelerated / torch.clamp(accelerated.abs(), min=1e-16)
            estimate = torch.istft(magnitude * angles, config.n_fft, config.hop_length, window=window,
                                   length=reference.size)
        return Coded(estimate[0].numpy().astype(np.float32))

    return code


def mel_inversion_coder() -> Coder:
    """The ``mel96+inversion`` reference: the true MelTok log-mel through ``MelInverter`` (no bits)."""
    import torch

    from ..config import FrontendConfig
    from ..frontend import MelFrontend
    from ..vocoder import MelInversionHead

    config = FrontendConfig()
    frontend = MelFrontend(config)
    inverter = MelInversionHead(config).inverter  # what a mel_inversion model of this front end runs

    def code(reference: np.ndarray) -> Coded:
        with torch.no_grad():
            log_mel = frontend(torch.from_numpy(reference)[None]).numpy()
        audio = inverter(log_mel)[0][0]
        return Coded(np.pad(audio, (0, max(0, reference.size - audio.size)))[:reference.size])

    return code


# ------------------------------------------------------------------ running
@dataclasses.dataclass
class AnchorResult:
    """One anchor's report (None when skipped), its measured delays and why it was skipped."""

    name: str
    report: object | None
    delays: list
    note: str | None = None


def run_anchors(audio_dir, *, categories=None, max_seconds: float | None = None, use_visqol: bool = True,
                tones: bool = True, codecs=CLASSIC_CODECS, griffin_lim: bool = True) -> list[AnchorResult]:
    """Score every available classic codec (and ``mel96+GL``, ``mel96+inversion``) on the clips under ``audio_dir``
    with the options of ``evaluate``. A codec with a missing tool is skipped with a note."""
    def score(coder, name):
        return score_folder(coder, audio_dir, name=name, categories=categories, max_seconds=max_seconds,
                            use_visqol=use_visqol, tones=tones)

    results = []
    for codec in codecs:
        missing = codec.missing_tools()
        if missing:
            note = f"{codec.name}: skipped, {' and '.join(missing)} not found (Debian: opus-tools, vorbis-tools, lame)"
            log.warning(note)
            results.append(AnchorResult(codec.name, None, [], note))
            continue
        delays: list = []
        results.append(AnchorResult(codec.name, score(tool_coder(codec, delays), codec.name), delays))
    if griffin_lim:
        results.append(AnchorResult("mel96+GL", score(mel_griffin_lim_coder(), "mel96+GL"), []))
        results.append(AnchorResult("mel96+inversion", score(mel_inversion_coder(), "mel96+inversion"), []))
    return results


ANCHOR_COLUMNS = (("kbps", "kbps", "{:.1f}"), ("mel_distance", "mel", "{:.3f}"),
                  ("mel_distance_p1", "mel_p1", "{:.3f}"), ("lsd", "lsd", "{:.3f}"),
                  ("buzz_db", "buzz_dB", "{:+.1f}"), ("comb86_db", "comb86", "{:+.1f}"),
                  ("level_db", "level_dB", "{:+.2f}"), ("peak_level_db", "peak_dB", "{:+.1f}"),
                  ("f0_error_cents", "f0_cents", "{:.0f}"), ("voicing_agreement", "voicing", "{:.2f}"),
                  ("visqol", "visqol", "{:.2f}"))


def anchors_table(model_report, anchors: list[AnchorResult]) -> str:
    """One table: the model and every anchor, per category (means), with bitrate and delay."""
    header = ["codec", "category", "clips", "delay"] + [title for _, title, _ in ANCHOR_COLUMNS]
    rows, notes = [], []
    entries = [("model", model_report, [])] + [(a.name, a.report, a.delays) for a in anchors]
    for name, report, delays in entries:
        if report is None:
            continue
        delay = f"{int(np.median(delays))}" if delays else "-"
        for category, stats in report.summary.items():
            cells = [name, category, str(stats["clips"]), delay if category == ALL else ""]
            for metric, _, fmt in ANCHOR_COLUMNS:
                value = stats[metric]["mean"]
                cells.append("-" if value is None else fmt.format(value))
            rows.append(cells)
    notes.append("delay: median lag in samples removed by cross-correlation; kbps: coded size / duration; "
                 "mel96+GL: true 96-band mel + Griffin-Lim; mel96+inversion: true 96-band mel + MelInverter (no bits)")
    notes += [a.note for a in anchors if a.note]
    reports = [(name, report) for name, report, _ in entries if report is not None]
    with_tones = [(name, report.tones) for name, report in reports if report.tones is not None]
    tones = ["", *tones_table(with_tones)] if with_tones else []
    targets = [line for name, report in reports for line in target_lines(report.targets(), name)]
    return "\n".join(format_rows(header, rows, left=2) + notes + tones + [""] + targets)


def anchors_path(prefix) -> Path:
    """``PREFIX-anchors.json``, beside the report's own files."""
    path = report_paths(prefix)[0]
    return path.with_name(path.stem + "-anchors.json")


def write_anchors(prefix, model_report, anchors: list[AnchorResult]) -> Path:
    """Write ``PREFIX-anchors.json`` (the table, and each anchor's report, delays and note); returns its path."""
    path = anchors_path(prefix)
    data = {"table": anchors_table(model_report, anchors).splitlines(), "model": model_report.model,
            "anchors": {a.name: {"note": a.note, "delays": a.delays,
                                 "report": None if a.report is None else a.report.to_dict()} for a in anchors}}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
    return path
