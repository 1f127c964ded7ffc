"""``detokenize``: the way back, a token dataset (or rows of it) -> one audio file per item.

Item ``music/a.ogg`` becomes ``OUT/music/a.wav`` (a known audio suffix is replaced). Two items
that would get the same file (``a.flac`` and ``a.ogg``, or ``a`` and ``a.wav``), or one whose file
would be the folder of another, are refused before any work with one line naming the clash;
``keep_suffix`` (``--keep-suffix``) appends the suffix to the whole id instead (``a.flac.wav``),
so two unique ids never share a file.

Each file is written atomically, so a file that exists is complete: a second run skips existing
files (resume) and rewrites them only with ``force`` (``-y/--force``). ``original_rate``
(``--original-rate``) writes each item at the sample rate its source file had (the row's
``sample_rate``) and its length there (``num_samples`` scaled to that rate, rounded: within a
sample of the source's length, which the dataset does not record); rows without a source rate are
written at the model's rate. Rows that cannot be decoded (another model's id, codes outside the
codebook, an unsafe id) are reported and skipped.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from meltok_runtime.dataset.items import JobProgress
from meltok_runtime.dataset.sources import AUDIO_SUFFIXES, Item
from meltok_runtime.dataset.reader import open_dataset
from meltok_runtime.defaults import mismatch_message
from meltok_runtime.errors import DatasetError, MeltokError, ModelMismatchError, OutputPathError

OUTPUT_SUFFIXES = (".wav", ".flac")


def output_name(item_id: str, suffix: str = ".wav", keep_suffix: bool = False) -> PurePosixPath:
    """The relative output path of an item; DatasetError for ids that would leave the output folder."""
    path = PurePosixPath(item_id)
    if not item_id or path.is_absolute() or ".." in path.parts or "\\" in item_id:
        raise DatasetError(f"id {item_id!r} is not a safe relative file name; rename the item")
    if path.suffix.lower() in AUDIO_SUFFIXES and not keep_suffix:
        return path.with_suffix(suffix)
    return path.with_name(path.name + suffix)


def check_no_clash(item_ids, suffix: str = ".wav", keep_suffix: bool = False) -> None:
    """DatasetError naming the first two ids that would be written to one file (or a file and a folder of that
    name), before any work; unsafe ids are left to the per-item report."""
    owner = {}
    for item_id in item_ids:
        try:
            name = output_name(item_id, suffix, keep_suffix)
        except DatasetError:
            continue
        if name in owner:
            clash = f"ids {owner[name]!r} and {item_id!r} would both be written to {str(name)!r}"
            break
        owner[name] = item_id
    else:
        folders = {parent: item_id for name, item_id in owner.items() for parent in name.parents}
        taken = next((name for name in owner if name in folders), None)
        if taken is None:
            return
        clash = f"id {owner[taken]!r} would be written to {str(taken)!r}, a folder of id {folders[taken]!r}"
    raise DatasetError(f"{clash}; nothing was written: pass --keep-suffix to name files after whole ids "
                       "(a.flac -> a.flac.wav), or decode them apart with --ids")


def detokenize(dataset_path, output, *, bundle=None, backend: str = "auto", threads: int | None = None, ids=None,
               force: bool = False, suffix: str = ".wav", keep_suffix: bool = False, original_rate: bool = False,
               progress=None) -> dict:
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
    check_no_clash(ids if ids is not None else dataset.ids(), suffix, keep_suffix)
    total = len(ids) if ids is not None else len(dataset)
    stats = JobProgress(total, 0)
    summary = {"written": 0, "skipped": 0, "failures": []}
    with Codec.open(bundle, backend=backend, threads=threads) as codec:
        if dataset.model_id not in (None, *codec.accepts_tokens_of):
            raise ModelMismatchError(mismatch_message(f"dataset {str(dataset_path)!r}", dataset.model_id,
                                                      codec.model_id))
        output.mkdir(parents=True, exist_ok=True)
        for item in dataset.items(ids):
            try:
                target = output / output_name(item.id, suffix, keep_suffix)
                if target.exists() and not force:
                    summary["skipped"] += 1
                    stats.record(Item(item.id, ""))
                else:
                    seconds = _decode_one(codec, item, target, write_audio, original_rate)
                    summary["written"] += 1
                    stats.record(Item(item.id, ""), seconds)
            except MeltokError as error:
                summary["failures"].append({"id": item.id, "reason": str(error)})
                stats.record(Item(item.id, ""), failed=True)
            if progress is not None:
                progress(stats)
    return summary


def _decode_one(codec, item, target: Path, write_audio, original_rate: bool) -> float:
    """Decode one row to ``target`` (atomically); returns its duration in seconds."""
    if item.model_id not in (None, *codec.accepts_tokens_of):
        raise ModelMismatchError(mismatch_message(f"item {item.id!r}", item.model_id, codec.model_id))
    rate, length = codec.sample_rate, item.num_samples
    if original_rate and item.sample_rate and item.num_samples is not None:
        rate, length = item.sample_rate, round(item.num_samples * item.sample_rate / codec.sample_rate)
    audio = codec.decode(item.tokens, num_samples=length, sample_rate=rate)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_audio(target, audio[0], rate)
    return audio.shape[-1] / rate
