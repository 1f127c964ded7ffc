"""``detokenize``: the way back, a token dataset (or rows of it) -> one audio file per item.

Item ``music/a.ogg`` becomes ``OUT/music/a.wav`` (a known audio suffix is replaced). Each file is
written atomically, so a file that exists is complete: a second run skips existing files (resume)
and rewrites them only with ``force``. Rows that cannot be decoded (another model's id, codes
outside the codebook, an unsafe id) are reported and skipped.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from meltok_runtime.dataset.items import JobProgress
from meltok_runtime.dataset.sources import AUDIO_SUFFIXES, Item
from meltok_runtime.dataset import DatasetError, open_dataset
from meltok_runtime.errors import MeltokError, ModelMismatchError, OutputPathError

OUTPUT_SUFFIXES = (".wav", ".flac")


def output_name(item_id: str, suffix: str = ".wav") -> PurePosixPath:
    """The relative output path of an item; DatasetError for ids that would leave the output folder."""
    path = PurePosixPath(item_id)
    if not item_id or path.is_absolute() or ".." in path.parts or "\\" in item_id:
        raise DatasetError(f"id {item_id!r} is not a safe relative file name; rename the item")
    return path.with_suffix(suffix) if path.suffix.lower() in AUDIO_SUFFIXES else path.with_name(path.name + suffix)


def detokenize(dataset_path, output, *, bundle=None, backend: str = "auto", threads: int | None = None, ids=None,
               force: bool = False, suffix: str = ".wav", progress=None) -> dict:
    """Decode the items (all, or ``ids``) of a dataset into ``output``; returns counts and failures."""
    from meltok_runtime.io.audio import write_audio
    from meltok_runtime.codec import Codec

    if suffix not in OUTPUT_SUFFIXES:
        raise OutputPathError(f"audio suffix {suffix!r} is not supported here; use one of {OUTPUT_SUFFIXES}")
    dataset, output = open_dataset(dataset_path), Path(output)
    if output.exists() and not output.is_dir():
        raise OutputPathError(f"output path {str(output)!r} is a file; give a folder")
    if ids is not None:
        missing = sorted(set(ids) - set(dataset.ids()))
        if missing:
            raise DatasetError(f"{len(missing)} requested id(s) are not in the dataset, e.g. {missing[0]!r}; "
                               "list the ids with meltok_runtime.dataset.open_dataset(...).ids()")
    total = len(ids) if ids is not None else len(dataset)
    stats = JobProgress(total, 0)
    summary = {"written": 0, "skipped": 0, "failures": []}
    with Codec.open(bundle, backend=backend, threads=threads) as codec:
        if dataset.model_id not in (None, codec.model_id):
            raise ModelMismatchError(f"dataset {str(dataset_path)!r} holds tokens of {dataset.model_id}, the bundle is "
                                     f"{codec.model_id}; decode with the bundle that made them (-b)")
        output.mkdir(parents=True, exist_ok=True)
        for item in dataset.items(ids):
            try:
                target = output / output_name(item.id, suffix)
                if target.exists() and not force:
                    summary["skipped"] += 1
                    stats.record(Item(item.id, ""))
                else:
                    seconds = _decode_one(codec, item, target, write_audio)
                    summary["written"] += 1
                    stats.record(Item(item.id, ""), seconds)
            except MeltokError as error:
                summary["failures"].append({"id": item.id, "reason": str(error)})
                stats.record(Item(item.id, ""), failed=True)
            if progress is not None:
                progress(stats)
    return summary


def _decode_one(codec, item, target: Path, write_audio) -> float:
    """Decode one row to ``target`` (atomically); returns its duration in seconds."""
    if item.model_id not in (None, codec.model_id):
        raise ModelMismatchError(f"tokens of model {item.model_id}, not {codec.model_id}")
    audio = codec.decode(item.tokens, num_samples=item.num_samples)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_audio(target, audio[0], codec.sample_rate)
    return audio.shape[-1] / codec.sample_rate
