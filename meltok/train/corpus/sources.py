"""Source files of a corpus: scanning folders (and ``.pk3`` archives) for audio, naming sources,
finding licences, drawing splits, and decoding each file to 44.1 kHz mono int16 with its measurements."""
from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from meltok_runtime.io.audio import load_mono
from meltok_runtime.io.formats import AUDIO_SUFFIXES

from .bandwidth import measure_bandwidth
from .manifest import SAMPLE_RATE

log = logging.getLogger("meltok.train.corpus")


def _package_root(root: Path) -> Path | None:
    """``pkgs/klettres-data`` for ``pkgs/klettres-data/usr/share/...`` (an unpacked .deb), else None."""
    parts = root.absolute().parts
    at = parts.index("usr") if "usr" in parts else 0
    return Path(*parts[:at]) if at > 1 else None


def source_name(root: Path) -> str:
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


def split_of(key: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2.0 ** 64
    return "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scan(sources: list[Path], tmp: Path, seed: int, max_files: int | None) -> list[dict]:
    """Candidate files (symlinks skipped, identical bytes deduplicated), in a fixed order."""
    items, seen = [], set()
    for root in sources:
        name = source_name(root)
        found: list[tuple[str, Path]] = []
        walk = [(root.parent, [], [root.name])] if root.is_file() else os.walk(root)
        for folder, dirs, files in walk:
            dirs.sort()
            for fname in sorted(files):
                path = Path(folder) / fname
                if path.is_symlink():
                    continue
                rel = path.name if root.is_file() else path.relative_to(root).as_posix()
                if path.suffix.lower() in AUDIO_SUFFIXES:
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
                if Path(member).suffix.lower() in AUDIO_SUFFIXES and not member.endswith("/"):
                    target = tmp / rel / member
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as dst:
                        dst.write(src.read())
                    out.append((f"{rel}!{member}", target))
    except (zipfile.BadZipFile, OSError) as exc:
        log.warning("skipping archive %s: %s", archive, exc)
    return out


def _decode(audio_path: str) -> tuple[dict, np.ndarray | None, str | None]:
    """Decode, mix to mono, resample to 44.1 kHz, measure. Runs in worker processes.

    Returns ``(info, int16 [N] or None, error or None)``.
    """
    try:
        loaded = load_mono(audio_path, SAMPLE_RATE)
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types for damaged files
        return {}, None, f"{type(exc).__name__}: {exc}"
    mono = loaded.samples
    info = {"sample_rate": loaded.source_rate, "channels": loaded.channels,
            "duration": round(loaded.source_samples / loaded.source_rate, 4)}
    peak = float(np.abs(mono).max())
    info["gain_db"] = round(-20 * math.log10(peak), 3) if peak > 1.0 else 0.0  # decoded overshoot
    if peak > 1.0:
        mono = mono / peak
    info["bandwidth"] = measure_bandwidth(mono, SAMPLE_RATE)
    pcm = np.clip(np.round(mono * 32767.0), -32768, 32767).astype(np.int16)
    return info, pcm, None


def decoded(items: list[dict], workers: int) -> Iterator[tuple[dict, np.ndarray | None, str | None]]:
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
