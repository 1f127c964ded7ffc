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

Modules: ``bandwidth`` (the band-limit screen), ``sources`` (scanning and decoding source
files), ``shards`` (the shard writer and its journal), ``manifest`` (the manifest, written and
read with its version check), ``build`` (``build_corpus``), ``reader`` (``CorpusReader``).
Only numpy, soundfile and soxr are used (no torch).
"""
from .bandwidth import is_band_limited, measure_bandwidth
from .build import build_corpus
from .manifest import SAMPLE_RATE, SPLITS, read_manifest
from .reader import CorpusReader

__all__ = ["SAMPLE_RATE", "SPLITS", "CorpusReader", "build_corpus", "is_band_limited", "measure_bandwidth",
           "read_manifest"]
