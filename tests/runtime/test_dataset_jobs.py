"""The tokenize jobs: worker processes, exact-length batches, resume after SIGKILL, and Ray Data on a
local 2-CPU instance all give the tokens ``meltok-rt encode`` gives."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from meltok_runtime.io.audio import load_audio, prepare_audio
from meltok_runtime.dataset import open_dataset

from .conftest import DATA
from .corpus_fixtures import assert_same_tokens, run_cli
from .test_imports import run_python

pytest.importorskip("pyarrow")

CLI = [sys.executable, "-c", "from meltok_runtime.cli.main import main; main()"]


def test_two_worker_processes_give_the_same_tokens(clips, encoded, tmp_path):
    result = run_cli("tokenize", clips, "-o", tmp_path / "ds", "--workers", 2, "--backend", "ort-cpu")
    assert result.exit_code == 0, result.output
    assert_same_tokens(tmp_path / "ds", encoded)


def test_items_of_one_length_are_encoded_as_one_batch_with_unchanged_tokens(tmp_path, monkeypatch):
    from meltok_runtime import Codec
    from meltok_runtime.dataset import local_job as corpus_local
    from meltok_runtime.dataset.job import tokenize

    audio, rate = load_audio(DATA / "music.flac")
    folder = tmp_path / "cuts"
    folder.mkdir()
    for index in range(4):  # four different 1.5 s cuts of real music: one length
        sf.write(folder / f"cut{index}.wav", audio[:, index * 80000:index * 80000 + 66150].T, rate, subtype="FLOAT")
    groups = []
    original = corpus_local._encode
    monkeypatch.setattr(corpus_local, "_encode", lambda audios: groups.append(len(audios)) or original(audios))
    tokenize([folder], tmp_path / "ds", backend="ort-cpu")
    assert max(groups) > 1 and sum(groups) == 4
    with Codec.open(backend="ort-cpu") as codec:
        for item in open_dataset(tmp_path / "ds"):
            mono, _ = prepare_audio(load_audio(folder / item.id.split("/")[-1])[0][None], rate)
            assert np.array_equal(item.tokens, codec.encode(mono, rate)[0]), item.id


@pytest.fixture
def many_clips(tmp_path):
    """40 cuts of 2 s of real music: enough work to kill a job in the middle."""
    folder = tmp_path / "many"
    folder.mkdir()
    for name, count in (("long_music.ogg", 30), ("music.flac", 10)):
        audio, rate = load_audio(DATA / name)
        for index in range(count):
            cut = audio[:, index * rate // 2:index * rate // 2 + 2 * rate]
            sf.write(folder / f"{name}-{index}.flac", cut.T, rate)
    return folder


def test_sigkill_in_the_middle_then_the_same_command_finishes_the_job(many_clips, tmp_path):
    output = tmp_path / "ds"
    command = [*CLI, "tokenize", str(many_clips), "-o", str(output),
               "--shard-rows", "3", "--backend", "ort-cpu"]
    journal = output / "journal.jsonl"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if journal.is_file() and journal.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    committed = [json.loads(line) for line in journal.read_text().splitlines()]
    kept = {entry["shard"]["file"]: (output / entry["shard"]["file"]).read_bytes() for entry in committed}
    assert 2 <= len(kept) and sum(entry["shard"]["rows"] for entry in committed) < 40
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "40 items" in finished.stdout and "0 failed" in finished.stdout
    assert all((output / name).read_bytes() == content for name, content in kept.items())  # never rewritten
    ids = open_dataset(output).ids()
    assert len(ids) == len(set(ids)) == 40  # nothing lost, nothing twice
    info = json.loads((output / "dataset.json").read_text())
    assert info["complete"] and info["counts"]["items"] == 40
    assert sorted(p.name for p in (output / "shards").iterdir()) == sorted(
        shard["file"].split("/")[-1] for shard in info["shards"])
    reference = subprocess.run([*CLI, "encode",
                                str(many_clips / "music.flac-3.flac"), "-o", str(tmp_path / "x.mtok"),
                                "--backend", "ort-cpu"], capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    from meltok_runtime.io.tokenfile import read_tokens
    assert np.array_equal(open_dataset(output).get("many/music.flac-3.flac").tokens,
                          read_tokens(tmp_path / "x.mtok").tokens[0])


def descendants(pid: int) -> set:
    """Ids of every process below ``pid`` (from /proc)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (exited, waiting to be reaped: it holds no memory)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def command_line(pid: int) -> str:
    """The command line of ``pid``, or "" when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_job_leaves_no_worker_behind_and_the_rerun_does_every_item_once(stop, many_clips, tmp_path):
    output = tmp_path / "ds"
    command = [*CLI, "tokenize", str(many_clips), "-o", str(output), "--workers", "2", "--shard-rows", "3",
               "--backend", "ort-cpu"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal, workers, deadline = output / "journal.jsonl", set(), time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:  # two workers started and a shard committed
        workers |= {pid for pid in descendants(process.pid) if running(pid)}
        if len(workers) >= 2 and journal.is_file() and journal.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    workers |= descendants(process.pid)
    os.kill(process.pid, stop)
    _, stderr = process.communicate(timeout=120)
    assert len(workers) >= 2 and process.returncode in ((130,) if stop == signal.SIGTERM else (-signal.SIGKILL,)), \
        (process.returncode, stderr)
    if stop == signal.SIGTERM:
        assert "interrupted; the shards written so far are kept: run the same command to resume" in stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(running(pid) for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if running(pid)], "worker processes outlived the job"
    assert len(open_dataset(output).ids()) < 40
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "40 items" in finished.stdout and "0 failed" in finished.stdout
    ids = open_dataset(output).ids()
    assert len(ids) == len(set(ids)) == 40  # every item exactly once


def test_a_dead_worker_stops_the_job_with_one_line_and_the_rerun_does_its_items(many_clips, tmp_path):
    output = tmp_path / "ds"
    command = [*CLI, "tokenize", str(many_clips), "-o", str(output), "--workers", "2", "--shard-rows", "3",
               "--backend", "ort-cpu"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal, deadline = output / "journal.jsonl", time.monotonic() + 300
    workers = set()
    while time.monotonic() < deadline and process.poll() is None:
        workers = {pid for pid in descendants(process.pid) if running(pid) and "spawn_main" in command_line(pid)}
        if len(workers) == 2 and journal.is_file() and journal.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    os.kill(min(workers), signal.SIGKILL)  # what the kernel's out-of-memory killer does
    _, stderr = process.communicate(timeout=120)
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert process.returncode == 1 and len(errors) == 1, stderr
    assert "an encoder worker process" in errors[0] and "BrokenProcessPool" in errors[0]
    assert "none was marked failed" in errors[0] and "run the same command again to resume" in errors[0]
    info = json.loads((output / "dataset.json").read_text())
    assert info["failures"] == [] and not info["complete"] and info["counts"]["items"] < 40
    assert not [pid for pid in workers if running(pid)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "40 items" in finished.stdout and "0 failed" in finished.stdout
    ids = open_dataset(output).ids()
    assert len(ids) == len(set(ids)) == 40


def test_ray_actors_are_sized_from_the_cluster_nodes_not_the_driver(monkeypatch):
    from meltok_runtime.dataset.ray_job import ActorSize, size_actors
    from meltok_runtime.errors import ClusterError

    def nodes(*resources, dead=()):
        return [{"Alive": True, "Resources": r} for r in resources] + [{"Alive": False, "Resources": r} for r in dead]

    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # a big driver: must not matter
    assert size_actors(nodes({"CPU": 2.0}), 1) == ActorSize(2, 1.5, 0.0)  # the local 2-CPU layout
    assert size_actors(nodes(*[{"CPU": 8.0}] * 4), 4) == ActorSize(8, 7.5, 0.0)  # one actor a node
    assert size_actors(nodes(*[{"CPU": 8.0}] * 4), 8) == ActorSize(4, 3.5, 0.0)  # two a node
    assert size_actors(nodes({"CPU": 8.0}, dead=[{"CPU": 64.0}]), 1) == ActorSize(8, 7.5, 0.0)  # dead nodes ignored
    assert size_actors(nodes({"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 16.0}), 3) == ActorSize(5, 4.5, 0.0)  # lowered to fit
    gpu = size_actors(nodes({"CPU": 16.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 1.0}), 4, gpus_per_actor=0.5)
    assert gpu.num_gpus == 0.5 and gpu.num_cpus + 0.5 <= 8  # two actors per GPU node
    with pytest.raises(ClusterError, match=r"hold at most 2 encoder actor\(s\).*--workers 2 or fewer"):
        size_actors(nodes({"CPU": 16.0, "GPU": 1.0}), 3, gpus_per_actor=0.5)
    with pytest.raises(ClusterError, match="or fewer --threads"):
        size_actors(nodes({"CPU": 4.0}), 1, threads=8)
    with pytest.raises(ClusterError, match="no live node"):
        size_actors(nodes(dead=[{"CPU": 8.0}]), 1)


@pytest.fixture
def local_ray():
    """A local Ray instance on 2 CPUs, shut down after the test."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_job_equals_local_mode_and_resumes_a_local_dataset(local_ray, clips, encoded, local_dataset, tmp_path):
    from meltok_runtime.dataset.job import tokenize

    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("speech.flac", "effects.flac"):
        shutil.copy(clips / name, folder / name)
    first = tokenize([folder], tmp_path / "ds", backend="ort-cpu", shard_rows=2)  # local mode
    shard = (tmp_path / "ds" / first["shards"][0]["file"]).read_bytes()
    for name in ("music.flac", "music48k.flac", "long_music.ogg"):
        shutil.copy(clips / name, folder / name)
    (folder / "broken.ogg").write_bytes(b"OggS but not really")  # a bad item for Ray's read stage
    summary = tokenize([folder], tmp_path / "ds", backend="ort-cpu", shard_rows=2, ray_address="local")
    assert summary["counts"] == {"items": 5, "failed": 1, "shards": 3}
    assert (tmp_path / "ds" / first["shards"][0]["file"]).read_bytes() == shard
    assert summary["failures"][0]["id"] == "clips/broken.ogg" and "cannot read" in summary["failures"][0]["reason"]
    assert_same_tokens(tmp_path / "ds", encoded)
    assert local_ray.is_initialized()  # a Ray instance the job did not start is left running


def test_modules_import_without_pyarrow_and_ray_and_say_how_to_install(clips, tmp_path):
    result = run_python("""
        import meltok_runtime.dataset.job, meltok_runtime.dataset.ray_job, meltok_runtime.dataset.decode
        from meltok_runtime.cli.main import main
        sys.argv = ["meltok-rt", "tokenize", sys.argv[1], "-o", sys.argv[2]]
        main()
    """, clips, tmp_path / "ds", blocked=("torch", "pyarrow", "ray"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "needs the Python package 'pyarrow'" in result.stderr and "pip install" in result.stderr


@pytest.mark.parametrize("args, expected", [((), None), (("--ray",), "local"), (("--ray=auto",), "auto"),
                                            (("--ray", "ray://head:10001"), "ray://head:10001")])
def test_ray_option_takes_an_optional_address(args, expected, clips, tmp_path, monkeypatch):
    from meltok_runtime.dataset import job as corpus_job

    calls = []
    summary = {"counts": {"items": 0, "failed": 0, "shards": 0}, "hours": 0.0}
    monkeypatch.setattr(corpus_job, "tokenize", lambda *a, **kw: calls.append(kw) or summary)
    result = run_cli("tokenize", clips, "-o", tmp_path / "ds", *args)
    assert result.exit_code == 0, result.output
    assert calls[0]["ray_address"] == expected and calls[0]["workers"] == 1
