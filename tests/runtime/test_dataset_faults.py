"""Faults are not bad items: a backend error, out of memory or a dead worker stops a tokenize job with a
clear message, records nothing for the items in flight, and the same command then does them; only an
item's own bad data is recorded as that item's failure."""
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from meltok_runtime.dataset import open_dataset
from meltok_runtime.errors import AudioInputError, BackendError, ItemError, ModelMismatchError, WorkerError

from .corpus_fixtures import assert_same_tokens, run_cli

pytest.importorskip("pyarrow")


def _info(folder):
    return json.loads((folder / "dataset.json").read_text())


def test_a_backend_error_stops_the_job_and_the_rerun_does_the_items(clips, encoded, tmp_path, monkeypatch):
    from meltok_runtime.dataset import local_job

    calls, original = [], local_job.encode_group

    def failing_on_the_third_call(codec, audios):
        calls.append(len(audios))
        if len(calls) == 3:
            raise BackendError("CUDA failure 700: an illegal memory access was encountered")
        return original(codec, audios)

    monkeypatch.setattr(local_job, "encode_group", failing_on_the_third_call)
    result = run_cli("tokenize", clips, "-o", tmp_path / "ds", "--backend", "ort-cpu", "--shard-rows", 1)
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("tokenizing")]
    assert result.exit_code == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith("Error: encoding failed (BackendError: CUDA failure 700"), errors[0]
    assert "not of the items" in errors[0] and "run the same command again to resume" in errors[0]
    info = _info(tmp_path / "ds")
    assert info["failures"] == [] and info["counts"]["items"] == 2 and not info["complete"]
    monkeypatch.setattr(local_job, "encode_group", original)
    again = run_cli("tokenize", clips, "-o", tmp_path / "ds", "--backend", "ort-cpu", "--shard-rows", 1)
    assert again.exit_code == 0, again.output
    assert "5 items" in again.stdout and "0 failed" in again.stdout
    assert_same_tokens(tmp_path / "ds", encoded)


def test_out_of_memory_while_reading_is_a_fault_not_a_bad_item(clips, tmp_path, monkeypatch):
    from meltok_runtime.dataset import local_job
    from meltok_runtime.dataset.job import tokenize

    original = local_job.load_item

    def out_of_memory_on_speech(item, *args):
        if item.id.endswith("speech.flac"):
            raise MemoryError("Unable to allocate 3.2 GiB for an array")
        return original(item, *args)

    monkeypatch.setattr(local_job, "load_item", out_of_memory_on_speech)
    folder = tmp_path / "few"
    folder.mkdir()
    for name in ("speech.flac", "effects.flac"):
        shutil.copy(clips / name, folder / name)
    with pytest.raises(WorkerError, match=r"reading .*speech.flac.* failed \(MemoryError"):
        tokenize([folder], tmp_path / "ds", backend="ort-cpu")
    assert _info(tmp_path / "ds")["failures"] == []
    monkeypatch.setattr(local_job, "load_item", original)
    summary = tokenize([folder], tmp_path / "ds", backend="ort-cpu")
    assert summary["counts"] == {"items": 2, "failed": 0, "shards": summary["counts"]["shards"]}
    assert sorted(open_dataset(tmp_path / "ds").ids()) == ["few/effects.flac", "few/speech.flac"]


class _PoolBreakingAtSubmission:
    """An encoder pool whose workers die after its first job: the next ``submit`` raises ``BrokenProcessPool``,
    as ``ProcessPoolExecutor`` does when it notices a killed worker before a result does."""

    def __init__(self, executor):
        self.executor, self.submitted = executor, 0

    def submit(self, *args):
        from concurrent.futures.process import BrokenProcessPool

        self.submitted += 1
        if self.submitted > 1:
            raise BrokenProcessPool("A child process terminated abruptly, the process pool is not usable anymore")
        return self.executor.submit(*args)

    def shutdown(self, **options):
        self.executor.shutdown(**options)


def test_a_worker_found_dead_at_submission_stops_the_job_with_one_line(clips, tmp_path, monkeypatch):
    from meltok_runtime.dataset import local_job

    pools = []

    def encoder_pool_then_readers(workers):  # the job makes its encoder pool first, then its readers
        executor = ThreadPoolExecutor(workers)
        pools.append(executor)
        return _PoolBreakingAtSubmission(executor) if len(pools) == 1 else executor

    monkeypatch.setattr(local_job, "ThreadPoolExecutor", encoder_pool_then_readers)
    result = run_cli("tokenize", clips, "-o", tmp_path / "ds", "--backend", "ort-cpu", "--shard-rows", 1)
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("tokenizing")]
    assert result.exit_code == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith("Error: an encoder worker process (killed, or out of memory?) failed "
                                "(BrokenProcessPool: A child process terminated abruptly"), errors[0]
    assert "none was marked failed" in errors[0] and "run the same command again to resume" in errors[0]
    info = _info(tmp_path / "ds")
    assert info["failures"] == [] and info["counts"]["items"] <= 1 and not info["complete"]
    monkeypatch.undo()
    again = run_cli("tokenize", clips, "-o", tmp_path / "ds", "--backend", "ort-cpu", "--shard-rows", 1)
    assert again.exit_code == 0, again.output
    assert "5 items" in again.stdout and "0 failed" in again.stdout


class _Refusing:
    """A codec stand-in whose encoder raises ``error``."""

    codebook_size = 8192

    def __init__(self, error):
        self.error = error

    def encode_prepared(self, audio):
        raise self.error


def test_encode_group_tells_an_items_data_from_a_fault():
    from meltok_runtime.dataset.items import encode_group

    audio = [np.zeros(4096, np.float32)]
    with pytest.raises(ItemError, match="contains NaN"):
        encode_group(_Refusing(AudioInputError("audio contains NaN or Inf at sample 10; clean it first")), audio)
    with pytest.raises(BackendError):
        encode_group(_Refusing(BackendError("the ONNX Runtime session failed")), audio)
    with pytest.raises(MemoryError):
        encode_group(_Refusing(MemoryError()), audio)


def test_ray_encoder_stage_records_bad_audio_and_raises_faults(monkeypatch):
    from meltok_runtime.codec import Codec
    from meltok_runtime.dataset import ray_job

    with Codec.open(backend="ort-cpu") as codec:
        model_id = codec.model_id
    stage = ray_job.EncodeStage(None, "ort-cpu", 1, model_id)
    batch = {"id": ["a", "b"], "reason": ["", ""], "sample_rate": [44100, 44100], "channels": [1, 1],
             "audio": [np.zeros(4096, np.float32).tobytes(), np.zeros(8192, np.float32).tobytes()]}
    monkeypatch.setattr(ray_job, "encode_group", lambda codec, audios: (_ for _ in ()).throw(
        ItemError("audio contains NaN")) if len(audios[0]) == 4096 else [np.zeros((12, 4), np.uint16)])
    out = stage(batch)
    assert out["reason"] == ["audio contains NaN", ""] and out["num_samples"] == [0, 8192]
    monkeypatch.setattr(ray_job, "encode_group", lambda codec, audios: (_ for _ in ()).throw(
        BackendError("the CUDA provider failed")))
    with pytest.raises(BackendError):
        stage(batch)


class _RayTaskFailure(Exception):
    """What Ray raises for a failed task: the original exception in ``cause``."""

    def __init__(self, cause):
        super().__init__("ray::MapWorker(MapBatches(EncodeStage)).submit() (pid=1, ip=10.0.0.2)\nTraceback ...")
        self.cause = cause


class _FailingDataset:
    def __init__(self, error):
        self.error = error

    def iter_rows(self):
        yield {"id": "first"}
        raise self.error


@pytest.mark.parametrize("cause, expected, match", [
    (MemoryError("Task was killed due to the node running low on memory"), WorkerError, "MemoryError: Task was killed"),
    (ModelMismatchError("this Ray worker's bundle holds x"), ModelMismatchError, "bundle holds x")])
def test_ray_failures_stop_the_job_with_what_failed(cause, expected, match):
    from meltok_runtime.dataset.ray_job import _rows

    rows = _rows(_FailingDataset(_RayTaskFailure(cause)))
    assert next(rows) == {"id": "first"}
    with pytest.raises(expected, match=match):
        next(rows)
