"""Training corpus: scan folders of real audio, drop band-limited files, write FLAC shards.

A corpus folder holds::

    CORPUS/manifest.json                        per-file records, shards, totals (atomic)
    CORPUS/journal.jsonl                        one line per finished shard (resume state)
    CORPUS/{train,valid,test}/shard-00000.flac  16-bit mono 44.1 kHz, at most ``shard_mb`` MiB

A shard concatenates many source files. A file's audio is stored as one or more
*segments* ``{"shard": "train/shard-00003.flac", "offset": o, "length": n}``
(samples at 44.1 kHz); a file continues in the next shard when a shard fills up.
Splits are drawn per file from a hash of ``seed`` and the file's path inside its
source, so they do not depend on the order, the machine or the other files.

Only numpy, soundfile and soxr are used (no torch).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr

from meltok_runtime.atomic import atomic_output
from ..errors import CorpusError

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
SPLITS = ("train", "valid", "test")
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})
MANIFEST_FORMAT = "meltok-corpus"
MANIFEST_VERSION = 1

# Band-limit thresholds, measured on the Debian packages (see ``is_band_limited``).
MIN_ABOVE_11K_DB = -60.0
MIN_BANDWIDTH_HZ = 11025.0
SILENCE_RMS_DB = -70.0

_FLOOR_DB = -120.0
_BLOCK = SAMPLE_RATE  # samples written per step; shard size is checked before each block


# ----------------------------------------------------------------------------- bandwidth

def _long_term_spectrum(audio: np.ndarray, n_fft: int, max_frames: int) -> np.ndarray:
    """Mean power spectrum ``[n_fft // 2 + 1]`` of Hann frames of ``audio [N]`` (no overlap)."""
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    starts = np.arange((len(audio) - n_fft) // n_fft + 1) * n_fft
    if len(starts) > max_frames:  # evenly spread subset keeps long files cheap
        starts = starts[np.linspace(0, len(starts) - 1, max_frames).round().astype(np.int64)]
    window = np.hanning(n_fft).astype(np.float32)
    power = np.zeros(n_fft // 2 + 1)
    for i in range(0, len(starts), 256):
        frames = audio[starts[i:i + 256, None] + np.arange(n_fft)] * window
        power += (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(0)
    return power / len(starts)


def measure_bandwidth(audio_mono: np.ndarray, sample_rate: int, *, floor_db: float = 60.0,
                      band_hz: float = 500.0, n_fft: int = 2048, max_frames: int = 4096) -> dict:
    """Bandwidth statistics of one file's long-term spectrum.

    Args:
        audio_mono: float ``[N]``.
        sample_rate: Hz.
        floor_db: a ``band_hz`` wide band counts as content while its mean power is
            within ``floor_db`` of the loudest band.

    Returns:
        ``{"above_11k_db", "above_16k_db"}``: energy above 11 / 16 kHz relative to
        the total, in dB (-120 = none); ``"bandwidth_hz"``: upper edge of the highest
        band with content (capped at Nyquist); ``"rms_db"``: level in dBFS.
    """
    x = np.asarray(audio_mono, dtype=np.float32).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        raise CorpusError(f"cannot measure {x.size} samples with NaN/Inf or none; give finite audio")
    power = _long_term_spectrum(x, n_fft, max_frames)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    total = power.sum()

    def rel_db(mask: np.ndarray) -> float:
        ratio = power[mask].sum() / total if total > 0 else 0.0
        return float(max(_FLOOR_DB, 10 * math.log10(ratio + 1e-30)))

    band = np.minimum((freqs // band_hz).astype(np.int64), int(sample_rate / 2 // band_hz))
    n_bands = int(band.max()) + 1
    band_db = 10 * np.log10(np.bincount(band, power, n_bands) / np.bincount(band, None, n_bands) + 1e-30)
    top = int(np.nonzero(band_db >= band_db.max() - floor_db)[0].max())
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return {
        "above_11k_db": round(rel_db(freqs >= 11000.0), 2),
        "above_16k_db": round(rel_db(freqs >= 16000.0), 2),
        "bandwidth_hz": float(min((top + 1) * band_hz, sample_rate / 2)),
        "rms_db": round(max(_FLOOR_DB, 20 * math.log10(rms + 1e-30)), 2),
    }


def is_band_limited(stats: dict, *, min_above_11k_db: float = MIN_ABOVE_11K_DB,
                    min_bandwidth_hz: float = MIN_BANDWIDTH_HZ) -> bool:
    """True for 8/16/22.05 kHz material and upsampled "fake full band" files.

    ``stats`` comes from ``measure_bandwidth`` on the mono mixdown resampled to
    44.1 kHz (soxr HQ). Thresholds chosen on 9,796 distinct files of seven Debian
    packages (game music, effects, read speech):

    - all 150 files stored at 5-22.05 kHz read <= -91 dB above 11 kHz (most -110 to
      -120) and <= 11 kHz of bandwidth;
    - 1,948 of the 9,646 files stored at >= 44.1 kHz are flagged, nearly all speech
      upsampled from 16 kHz before encoding (content stops at ~8 kHz above a flat
      codec/dither floor, -60 to -85 dB above 11 kHz; or, for noisy ones, a floor
      within 60 dB of the peak that starts below 11 kHz, caught by the bandwidth rule);
    - the files kept read -51 / -36 / -18 dB above 11 kHz (5th / 50th / 95th percentile).

    A genuinely dark file (a bass thump, an amp-simulated guitar stem) is dropped
    with them; it would teach the model nothing about the high band either.
    """
    return (stats["above_11k_db"] < min_above_11k_db) or (stats["bandwidth_hz"] <= min_bandwidth_hz)


# ----------------------------------------------------------------------------- scanning

def _package_root(root: Path) -> Path | None:
    """``pkgs/klettres-data`` for ``pkgs/klettres-data/usr/share/...`` (an unpacked .deb), else None."""
    parts = root.absolute().parts
    at = parts.index("usr") if "usr" in parts else 0
    return Path(*parts[:at]) if at > 1 else None


def _source_name(root: Path) -> str:
    """``pkgs/klettres-data/usr/share`` -> ``klettres-data``; other folders and files: their name."""
    pkg = _package_root(root)
    return pkg.name if pkg is not None else root.name


def _find_licence(path: Path, root: Path) -> str | None:
    """A copyright/licence file for ``path``: Debian ``usr/share/doc/*/copyright`` or one nearby."""
    pkg = _package_root(root)
    if pkg is not None:
        docs = sorted(pkg.glob("usr/share/doc/*/copyright"))
        if docs:
            return str(docs[0].resolve())
    for folder in [path.parent, *path.parent.parents]:
        for name in ("copyright", "COPYING", "LICENSE", "LICENSE.txt", "license.txt"):
            if (folder / name).is_file():
                return str((folder / name).resolve())
        if folder == root or root not in folder.parents:
            break
    return None


def _split_of(key: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2.0 ** 64
    return "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _scan(sources: list[Path], tmp: Path, seed: int, max_files: int | None) -> list[dict]:
    """Candidate files (symlinks skipped, identical bytes deduplicated), in a fixed order."""
    items, seen = [], set()
    for root in sources:
        name = _source_name(root)
        found: list[tuple[str, Path]] = []
        walk = [(root.parent, [], [root.name])] if root.is_file() else os.walk(root)
        for folder, dirs, files in walk:
            dirs.sort()
            for fname in sorted(files):
                path = Path(folder) / fname
                if path.is_symlink():
                    continue
                rel = path.name if root.is_file() else path.relative_to(root).as_posix()
                if path.suffix.lower() in AUDIO_EXTENSIONS:
                    found.append((rel, path))
                elif path.suffix.lower() == ".pk3":
                    found += _extract_pk3(path, rel, tmp / name)
        if max_files is not None and len(found) > max_files:  # a seeded, order-free subset
            found = sorted(found, key=lambda f: hashlib.sha256(f"{seed}:{f[0]}".encode()).digest())
            found = sorted(found[:max_files])
        for rel, path in found:
            digest = _sha1(path)
            if digest in seen:
                log.debug("skipping %s: same bytes as an earlier file", path)
                continue
            seen.add(digest)
            origin = rel.split("!")[0]
            origin_path = root if root.is_file() else root / origin
            items.append({"source": name, "relpath": rel, "audio": str(path), "sha1": digest,
                          "path": str(origin_path.resolve()) + (rel[len(origin):] if "!" in rel else ""),
                          "licence": _find_licence(origin_path, root)})
    return items


def _extract_pk3(archive: Path, rel: str, tmp: Path) -> list[tuple[str, Path]]:
    """Audio members of a ``.pk3`` (zip) archive, extracted under ``tmp``."""
    out = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in sorted(zf.namelist()):
                if Path(member).suffix.lower() in AUDIO_EXTENSIONS and not member.endswith("/"):
                    target = tmp / rel / member
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as dst:
                        dst.write(src.read())
                    out.append((f"{rel}!{member}", target))
    except (zipfile.BadZipFile, OSError) as exc:
        log.warning("skipping archive %s: %s", archive, exc)
    return out


# ----------------------------------------------------------------------------- decoding

def _decode(audio_path: str) -> tuple[dict, np.ndarray | None, str | None]:
    """Decode, mix to mono, resample to 44.1 kHz, measure. Runs in worker processes.

    Returns ``(info, int16 [N] or None, error or None)``.
    """
    try:
        x, sr = sf.read(audio_path, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for damaged files
        return {}, None, f"{type(exc).__name__}: {exc}"
    info = {"sample_rate": int(sr), "channels": int(x.shape[1]), "duration": round(len(x) / sr, 4)}
    if len(x) == 0 or not np.isfinite(x).all():
        return info, None, "empty or non-finite audio"
    mono = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        mono = soxr.resample(mono, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    peak = float(np.abs(mono).max())
    info["gain_db"] = round(-20 * math.log10(peak), 3) if peak > 1.0 else 0.0  # decoded overshoot
    if peak > 1.0:
        mono = mono / peak
    info["bandwidth"] = measure_bandwidth(mono, SAMPLE_RATE)
    pcm = np.clip(np.round(mono * 32767.0), -32768, 32767).astype(np.int16)
    return info, pcm, None


def _decoded(items: list[dict], workers: int) -> Iterator[tuple[dict, np.ndarray | None, str | None]]:
    """``_decode`` over ``items`` in order, with at most ``2 * workers`` files in flight."""
    if workers <= 1:
        for it in items:
            yield _decode(it["audio"])
        return
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        pending: list[concurrent.futures.Future] = []
        todo = iter(items)
        for it in todo:
            pending.append(pool.submit(_decode, it["audio"]))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.pop(0).result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_decode, nxt["audio"]))
            yield result


# ----------------------------------------------------------------------------- shards

class _ShardWriter:
    """Fills ``out/split/shard-NNNNN.flac`` one after another, each at most ``limit`` bytes.

    A shard is encoded in memory, then written with ``atomic_output`` and recorded in
    the journal; a finished shard is never opened for writing again.
    """

    def __init__(self, out: Path, split: str, index: int, limit: int, journal: Path):
        self.out, self.split, self.index, self.limit, self.journal = out, split, index, limit, journal
        self._sf = None
        self._reset()

    def _reset(self) -> None:
        self.samples, self.segments, self.files = 0, [], {}

    def _size(self) -> int:
        with self._buf.getbuffer() as view:
            return view.nbytes

    def note(self, i: int, record: dict) -> None:
        """Record file ``i``'s measurements with the shard being filled."""
        self.files[str(i)] = record

    def write(self, i: int, pcm: np.ndarray, start: int) -> None:
        """Append ``pcm`` int16 ``[N]`` = samples ``start:start + N`` of file ``i``."""
        for b in range(0, len(pcm), _BLOCK):
            block = pcm[b:b + _BLOCK]
            # FLAC never exceeds ~2.02 bytes/sample; the encoder holds back up to 4096 samples.
            if self._sf is not None and self.samples and \
                    self._size() + int(2.1 * (4096 + len(block))) + 8192 > self.limit:
                self.finish(end=(i, start + b))
            if self._sf is None:
                self._buf = io.BytesIO()
                self._sf = sf.SoundFile(self._buf, "w", SAMPLE_RATE, 1, "PCM_16", format="FLAC")
            self._sf.write(block)
            if self.segments and self.segments[-1][0] == i:
                self.segments[-1][2] += len(block)
            else:
                self.segments.append([i, self.samples, len(block), start + b])
            self.samples += len(block)

    def finish(self, end: tuple[int, int], done: bool = False) -> None:
        """Close the current shard (if any), write it, and journal it with ``end`` = (file, sample)."""
        line = {"split": self.split, "shard": None, "samples": 0, "bytes": 0, "end": list(end),
                "done": done, "files": self.files, "segments": []}
        if self._sf is not None:
            self._sf.close()
            data = self._buf.getvalue()
            self._sf = self._buf = None
            if len(data) > self.limit:
                raise CorpusError(f"shard of {len(data)} bytes exceeds the {self.limit}-byte limit; "
                                  "this is a bug, please report it")
            name = f"{self.split}/shard-{self.index:05d}.flac"
            with atomic_output(self.out / name) as tmp:
                tmp.write_bytes(data)
            self.index += 1
            line.update(shard=name, samples=self.samples, bytes=len(data), segments=self.segments)
        if line["shard"] or self.files or done:
            with open(self.journal, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self._reset()

    def abort(self) -> None:
        if self._sf is not None:
            self._sf.close()
            self._sf = self._buf = None


def _read_journal(journal: Path) -> tuple[str | None, list[dict]]:
    """``(plan fingerprint, shard lines)``; a torn last line (killed mid-write) is ignored."""
    if not journal.exists():
        return None, []
    lines = []
    for raw in journal.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            log.warning("ignoring a torn line in %s", journal)
    plan = lines[0].get("plan") if lines else None
    return plan, lines[1:]


# ----------------------------------------------------------------------------- build

def build_corpus(sources: Iterable[str | os.PathLike], out: str | os.PathLike, *, seed: int = 0,
                 valid_fraction: float = 0.05, test_fraction: float = 0.05,
                 holdout: list[str] | None = None, shard_mb: float = 45,
                 exclude_band_limited: bool = True, max_files_per_source: int | None = None,
                 workers: int = 1, progress: Callable[[int, int], None] | None = None) -> dict:
    """Build (or resume) a sharded 44.1 kHz mono FLAC corpus under ``out``; return the manifest.

    Args:
        sources: folders (scanned recursively; ``.pk3`` zips are opened) or single files.
            A folder ``.../PKG/usr/share`` of an unpacked Debian package is named ``PKG``.
        holdout: source names whose files all go to ``test``.
        shard_mb: size limit of one shard in MiB.
        exclude_band_limited: drop band-limited files (else keep them, flagged).
        max_files_per_source: a seeded subset of at most this many files per source.
        workers: decoding processes.
        progress: called as ``progress(files_done, files_total)``.

    Rerunning with the same arguments skips shards listed in ``out/journal.jsonl``.
    """
    sources = [Path(s) for s in sources]
    missing = [str(s) for s in sources if not s.exists()]
    if missing or not sources:
        raise CorpusError(f"sources {missing or '[]'} do not exist; give existing folders or files")
    if not (0 <= valid_fraction and 0 <= test_fraction and valid_fraction + test_fraction < 1):
        raise CorpusError(f"valid_fraction={valid_fraction}, test_fraction={test_fraction}: "
                          "expected two fractions >= 0 with a sum below 1")
    if not shard_mb >= 0.125:
        raise CorpusError(f"shard_mb={shard_mb}: expected a shard size of at least 0.125 MiB")
    names = {_source_name(s) for s in sources}
    unknown = sorted(set(holdout or []) - names)
    if unknown:
        raise CorpusError(f"holdout {unknown} names no source; the sources are {sorted(names)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "journal.jsonl"
    if not journal.exists() and any(out.iterdir()):
        raise CorpusError(f"{str(out)!r} is not empty and has no journal.jsonl; give a new or empty folder")
    limit = int(shard_mb * 2 ** 20)
    with tempfile.TemporaryDirectory(prefix="meltok-corpus-") as tmp:
        items = _scan(sources, Path(tmp), seed, max_files_per_source)
        for it in items:
            it["split"] = "test" if it["source"] in (holdout or []) else \
                _split_of(f"{it['source']}/{it['relpath']}", seed, valid_fraction, test_fraction)
        options = {"seed": seed, "valid_fraction": valid_fraction, "test_fraction": test_fraction,
                   "holdout": sorted(holdout or []), "shard_mb": shard_mb,
                   "exclude_band_limited": exclude_band_limited,
                   "max_files_per_source": max_files_per_source,
                   "thresholds": {"min_above_11k_db": MIN_ABOVE_11K_DB, "min_bandwidth_hz": MIN_BANDWIDTH_HZ,
                                  "silence_rms_db": SILENCE_RMS_DB}}
        plan = hashlib.sha256(json.dumps([options, [(i["split"], i["source"], i["relpath"], i["sha1"])
                                                    for i in items]]).encode()).hexdigest()
        old_plan, lines = _read_journal(journal)
        if old_plan is None:
            with atomic_output(journal) as t:
                t.write_text(json.dumps({"plan": plan, "options": options}) + "\n", encoding="utf-8")
        elif old_plan != plan:
            raise CorpusError(f"{str(out)!r} was built from other files or options; "
                              "rerun with the original arguments, or give a new folder")
        by_split = {s: [i for i in items if i["split"] == s] for s in SPLITS}
        done_files = 0
        for split in SPLITS:
            (out / split).mkdir(exist_ok=True)
            mine = [ln for ln in lines if ln["split"] == split]
            if mine and mine[-1]["done"]:
                done_files += len(by_split[split])
                continue
            start = tuple(mine[-1]["end"]) if mine else (0, 0)
            done_files += start[0]
            writer = _ShardWriter(out, split, sum(1 for ln in mine if ln["shard"]), limit, journal)
            try:
                done_files = _fill_split(writer, by_split[split], start, exclude_band_limited,
                                         workers, progress, done_files, len(items))
            except BaseException:
                writer.abort()
                raise
        _, lines = _read_journal(journal)
        manifest = _manifest(by_split, lines, options)
    with atomic_output(out / "manifest.json") as t:
        t.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def _fill_split(writer: _ShardWriter, items: list[dict], start: tuple[int, int], exclude: bool,
                workers: int, progress, done: int, total: int) -> int:
    first, offset = start
    for i, (info, pcm, error) in zip(range(first, len(items)), _decoded(items[first:], workers)):
        meta = {k: items[i][k] for k in ("path", "source", "relpath", "licence", "sha1")}
        if error is not None:
            log.warning("skipping unreadable %s: %s", items[i]["path"], error)
            writer.note(i, {**meta, **info, "band_limited": None, "excluded": "unreadable", "error": error})
        else:
            limited = is_band_limited(info["bandwidth"])
            reason = "silent" if info["bandwidth"]["rms_db"] < SILENCE_RMS_DB else \
                "band_limited" if limited and exclude else None
            writer.note(i, {**meta, **info, "band_limited": limited, "excluded": reason})
            if reason is None:
                skip = offset if i == first else 0
                writer.write(i, pcm[skip:], skip)
        done += 1
        if progress is not None:
            progress(done, total)
    writer.finish(end=(len(items), 0), done=True)
    return done


def _manifest(by_split: dict[str, list[dict]], lines: list[dict], options: dict) -> dict:
    records: dict[str, dict[int, dict]] = {s: {} for s in SPLITS}
    shards: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for ln in lines:
        recs = records[ln["split"]]
        for i, rec in ln["files"].items():
            recs[int(i)] = {**rec, "split": ln["split"], "segments": recs.get(int(i), {}).get("segments", [])}
        if ln["shard"]:
            shards[ln["split"]].append({"path": ln["shard"], "samples": ln["samples"], "bytes": ln["bytes"]})
            for i, offset, length, _ in ln["segments"]:
                recs[i].setdefault("segments", []).append(
                    {"shard": ln["shard"], "offset": offset, "length": length})
    files, totals = [], {}
    for split in SPLITS:
        recs = [records[split][i] for i in range(len(by_split[split]))]
        files += recs
        kept = [r for r in recs if r["excluded"] is None]
        samples = sum(seg["length"] for r in kept for seg in r["segments"])
        totals[split] = {
            "files": len(kept), "samples": samples, "hours": round(samples / SAMPLE_RATE / 3600, 4),
            "shards": len(shards[split]), "bytes": sum(s["bytes"] for s in shards[split]),
            "excluded": {reason: sum(r["excluded"] == reason for r in recs)
                         for reason in ("band_limited", "silent", "unreadable")},
            "band_limited_kept": sum(bool(r["band_limited"]) for r in kept)}
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "sample_rate": SAMPLE_RATE,
            "options": options, "totals": totals, "shards": shards, "files": files}


# ----------------------------------------------------------------------------- reading

class CorpusReader:
    """Random training crops from one split of a corpus built by ``build_corpus``.

    Only the samples of a crop are decoded (FLAC seek), never a whole shard.
    """

    SILENT_PEAK = 1e-3  # -60 dBFS: quieter crops are redrawn rather than amplified

    def __init__(self, corpus_dir: str | os.PathLike, split: str):
        self.root = Path(corpus_dir)
        if split not in SPLITS:
            raise CorpusError(f"split {split!r}: expected one of {list(SPLITS)}")
        path = self.root / "manifest.json"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CorpusError(f"cannot read {str(path)!r} ({exc}); build the corpus first") from exc
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
            raise CorpusError(f"{str(path)!r} is not a version-{MANIFEST_VERSION} meltok corpus manifest")
        segs = [(s["shard"], s["offset"], s["length"]) for f in manifest["files"]
                if f["split"] == split and f["excluded"] is None for s in f["segments"]]
        if not segs:
            raise CorpusError(f"split {split!r} of {str(self.root)!r} holds no audio; "
                              "use another split or more sources")
        self.split = split
        self.shards = sorted({s[0] for s in segs})
        index = {name: k for k, name in enumerate(self.shards)}
        self._shard = np.array([index[s[0]] for s in segs])
        self._offset = np.array([s[1] for s in segs], dtype=np.int64)
        self._length = np.array([s[2] for s in segs], dtype=np.int64)

    @property
    def num_samples(self) -> int:
        """Total samples of the split at 44.1 kHz."""
        return int(self._length.sum())

    def random_crop(self, rng: np.random.Generator, num_samples: int = 24320) -> np.ndarray:
        """A float32 ``[num_samples]`` crop, peak scaled to a random level in [-6, -1] dBFS.

        Files are picked with probability proportional to their duration, among those at
        least ``num_samples`` long when there are any (else shorter ones, zero-padded).
        A crop whose peak is below -60 dBFS is redrawn (up to 10 times; then it is
        returned unscaled).
        """
        long_enough = np.nonzero(self._length >= num_samples)[0]
        pool = long_enough if len(long_enough) else np.arange(len(self._length))
        weights = self._length[pool] / self._length[pool].sum()
        for _ in range(10):
            j = pool[rng.choice(len(pool), p=weights)]
            n = int(min(num_samples, self._length[j]))
            start = int(rng.integers(0, self._length[j] - n + 1))
            with sf.SoundFile(self.root / self.shards[self._shard[j]]) as f:
                f.seek(int(self._offset[j]) + start)
                crop = f.read(n, dtype="float32")
            crop = np.pad(crop, (0, num_samples - len(crop)))
            peak = float(np.abs(crop).max())
            if peak >= self.SILENT_PEAK:
                level_db = rng.uniform(-6.0, -1.0)
                return (crop * (10 ** (level_db / 20) / peak)).astype(np.float32)
        return crop
