"""Writers killed with SIGKILL midway leave the old output or the new one, never a partial one.

Each writer runs in a child process (``python -c``, public functions only). The test polls the
destination's folder until the writer's temporary sibling (``.NAME.*``) appears, waits a delay
(0, then seeded random moments inside the writer's measured write time) and kills the child.
The destination must then be byte-identical to the old output or to the complete new one;
stale temporaries may remain, but as hidden names that are neither the destination nor look
like an output of its kind (no ``.flac``/``.mtok`` suffix a folder scan would pick up).
"""
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import tiny_assets

POLL_SECONDS = 0.0002
EXTRA_TRIES = 4  # further kills at delay 0 when no seeded delay landed mid-write
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


# ------------------------------------------------------------------------------ harness
def temporaries(dest: Path) -> set:
    """Names in ``dest``'s folder that a writer of ``dest`` uses as temporaries."""
    return {name for name in os.listdir(dest.parent) if name.startswith(f".{dest.name}.")}


def run_writer(script: str, dest: Path, *args, delay: float | None, timeout: float = 300.0) -> dict:
    """Run ``script`` (argv: dest, *args) and SIGKILL it ``delay`` s after its temporary appears.

    ``delay=None`` lets it finish. Returns ``killed`` (it was still running when killed),
    ``stale`` (temporaries it left behind) and ``write_seconds`` (how long its temporary
    existed, for a finished writer; None where the polling missed it).
    """
    before = temporaries(dest)
    proc = subprocess.Popen([sys.executable, "-c", script, str(dest), *map(str, args)], env=CHILD_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen_at = gone_at = None
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"writer of {dest.name} still running after {timeout} s")
            present = bool(temporaries(dest) - before)
            if seen_at is None and present:
                seen_at = time.perf_counter()
            elif seen_at is not None and gone_at is None and not present:
                gone_at = time.perf_counter()
            if seen_at is not None and delay is not None and time.perf_counter() - seen_at >= delay:
                break
            time.sleep(POLL_SECONDS)
    finally:
        proc.kill()  # no-op where it already exited
        _, err = proc.communicate()
    killed = proc.returncode == -signal.SIGKILL
    assert killed or proc.returncode == 0, f"writer failed (exit {proc.returncode}):\n{err.decode()[-2000:]}"
    return {"killed": killed, "stale": temporaries(dest) - before,
            "write_seconds": None if seen_at is None or gone_at is None else gone_at - seen_at}


def check_stale_names(dest: Path, stale: set) -> None:
    for name in stale:
        assert name.startswith(".") and name != dest.name, name
        if dest.suffix:
            assert not name.endswith(dest.suffix), f"stale temporary {name} looks like a {dest.suffix} output"


def kill_schedule(window: float, seed: int) -> list:
    """0 (as soon as the temporary appears), then two seeded moments inside the write time."""
    rng = random.Random(seed)
    return [0.0, *sorted(rng.uniform(0.1, 0.9) * window for _ in range(2))]


def kill_repeatedly(script, dest, args, *, window, seed, check, reset) -> list:
    """Kill at each delay of ``kill_schedule``; ``check()`` the destination after each, then ``reset()``.

    Asserts at least one kill landed mid-write (a temporary was left), retrying at delay 0.
    """
    outcomes = []
    for attempt, delay in enumerate([*kill_schedule(window, seed), *[0.0] * EXTRA_TRIES]):
        if attempt >= 3 and any(o["stale"] for o in outcomes):
            break
        outcome = run_writer(script, dest, *args, delay=delay)
        check_stale_names(dest, outcome["stale"])
        outcome["result"] = check()
        outcomes.append(outcome)
        reset()
    assert any(o["stale"] for o in outcomes), f"no kill landed mid-write: {outcomes}"
    return outcomes


def tree_digest(folder: Path) -> dict:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ single files
TOKENS_SCRIPT = """
import sys
import numpy as np
from meltok_runtime.io.tokenfile import write_tokens
dest, seed, columns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tokens = np.random.default_rng(seed).integers(0, 8192, (1, 12, columns))
write_tokens(dest, tokens, sample_rate=44100, num_samples=columns * 2048, model_id=f"test:{seed}")
"""

MODEL_SCRIPT = """
import sys, torch
from meltok import MelTok
torch.manual_seed(int(sys.argv[2]))
MelTok.from_config("tiny").save(sys.argv[1])
"""

AUDIO_SCRIPT = """
import sys
import numpy as np
from meltok_runtime.io.audio import write_audio
seed, samples = int(sys.argv[2]), int(sys.argv[3])
write_audio(sys.argv[1], np.random.default_rng(seed).uniform(-0.5, 0.5, (2, samples)).astype(np.float32), 44100)
"""


def _single_file_battery(tmp_path, script, name, old_args, new_args, *, seed, in_process=None, equivalent=None):
    """The old file and the new reference, written by the script left to finish (or by ``in_process(path,
    *args)``, which saves a slow child start-up), then the kills.

    ``equivalent(path, reference)`` decides whether a complete new file matches the reference where
    the bytes may differ between processes; by default they must be identical.
    """
    dest, reference = tmp_path / name, tmp_path / "reference" / name
    reference.parent.mkdir()
    if in_process is None:
        run_writer(script, reference, *new_args, delay=None)
        window = run_writer(script, dest, *old_args, delay=None)["write_seconds"]
    else:
        in_process(reference, *new_args)
        started = time.perf_counter()
        in_process(dest, *old_args)
        window = time.perf_counter() - started
    old, new = dest.read_bytes(), reference.read_bytes()
    assert old != new
    shutil.copyfile(dest, reference.parent / "old")

    def check():
        data = dest.read_bytes()
        if data == old:
            return "old"
        assert data == new or (equivalent is not None and equivalent(dest, reference)), (
            f"{name} holds {len(data)} bytes: neither the old ({len(old)}) nor the new ({len(new)}) file")
        return "new"

    def reset():
        if dest.read_bytes() != old:
            shutil.copyfile(reference.parent / "old", dest)

    return kill_repeatedly(script, dest, new_args, window=window or 0.005, seed=seed, check=check, reset=reset)


def test_token_file_killed_midway(tmp_path):
    from meltok_runtime.io.tokenfile import read_tokens

    outcomes = _single_file_battery(tmp_path, TOKENS_SCRIPT, "big.mtok", [0, 300_000], [1, 300_000], seed=1)
    assert read_tokens(tmp_path / "big.mtok").model_id == "test:0"  # reset to the old file: still readable
    assert {o["result"] for o in outcomes} <= {"old", "new"}


def test_model_file_killed_midway(tmp_path):
    import torch

    from meltok import MelTok
    from meltok.modelfile import read_model_metadata

    def save(path, seed):  # the child's exact model
        torch.manual_seed(seed)
        MelTok.from_config("tiny").save(path)

    def equivalent(path, reference):  # safetensors orders its metadata differently in each process
        loaded = MelTok.load(path)  # complete: the weights match the hash recorded in the file
        return loaded.model_id == read_model_metadata(reference)["model_id"]

    _single_file_battery(tmp_path, MODEL_SCRIPT, "tiny.safetensors", [0], [1], seed=2, in_process=save,
                         equivalent=equivalent)
    assert MelTok.load(tmp_path / "tiny.safetensors").model_id.startswith("meltok-tiny:")


def test_audio_file_killed_midway(tmp_path):
    import soundfile as sf

    _single_file_battery(tmp_path, AUDIO_SCRIPT, "noise.flac", [0, 1_000_000], [1, 1_000_000], seed=3)
    assert sf.info(tmp_path / "noise.flac").frames == 1_000_000


# ------------------------------------------------------------------------------ folders
CHECKPOINT_SCRIPT = """
import sys, torch
from pathlib import Path
from meltok.train.run_checkpoint import save_checkpoint
run, step = Path(sys.argv[1]).parent.parent, int(sys.argv[2])
generator = torch.Generator().manual_seed(step)
state = {"model": {f"w{i}": torch.randn(256, 512, generator=generator) for i in range(16)},
         "data": {"epoch": 1, "position": 8 * step}}
save_checkpoint(run, state, step=step, shard_mib=1, keep=2)
"""


def _checkpoint_state(step: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(step)
    return {"model": {f"w{i}": torch.randn(256, 512, generator=generator) for i in range(16)},
            "data": {"epoch": 1, "position": 8 * step}}


def test_training_checkpoint_killed_midway(tmp_path):
    import torch

    from meltok.train.run_checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint

    def same(state, expected):
        assert state["data"] == expected["data"]
        assert all(torch.equal(state["model"][k], v) for k, v in expected["model"].items())

    old = save_checkpoint(tmp_path, _checkpoint_state(1), step=1, shard_mib=1, keep=2)
    old_digest = tree_digest(old)
    new = old.with_name("step-000000002")

    def check():
        steps = [step for step, _ in list_checkpoints(tmp_path)]
        assert steps in ([1], [1, 2]), steps  # temporaries are never listed
        assert tree_digest(old) == old_digest
        if steps == [1, 2]:
            same(load_checkpoint(new)[0], _checkpoint_state(2))  # hashes verified: complete
        same(load_checkpoint(latest_checkpoint(tmp_path))[0], _checkpoint_state(steps[-1]))
        return "new" if steps == [1, 2] else "old"

    def reset():
        shutil.rmtree(new, ignore_errors=True)

    started = time.perf_counter()  # the child's checkpoint, saved here: the write time, without a torch start-up
    save_checkpoint(tmp_path, _checkpoint_state(2), step=2, shard_mib=1, keep=2)
    window = time.perf_counter() - started
    assert check() == "new"
    reset()
    kill_repeatedly(CHECKPOINT_SCRIPT, new, [2], window=window, seed=4, check=check, reset=reset)


BUNDLE_SCRIPT = """
import sys, torch
from meltok import MelTok
from meltok_export.bundle import export_bundle
torch.manual_seed(int(sys.argv[2]))
export_bundle(MelTok.from_config("tiny"), sys.argv[1], verify_seconds=1.0, force=True)
"""


@pytest.mark.slow
def test_export_bundle_killed_midway(tmp_path, tiny):
    """Replacing an existing bundle: killed during export and verification, then left to finish."""
    reference = tmp_path / "reference"
    window = run_writer(BUNDLE_SCRIPT, reference, 1, delay=None)["write_seconds"]
    new_digest = tree_digest(reference)  # exports are deterministic: the complete new bundle, byte for byte
    dest = Path(shutil.copytree(tiny.bundle, tmp_path / "bundle"))
    old_digest = tree_digest(dest)
    assert new_digest != old_digest

    def check():
        assert dest.is_dir(), f"the bundle folder is gone (left: {sorted(os.listdir(tmp_path))})"
        digest = tree_digest(dest)
        assert digest in (old_digest, new_digest), f"the bundle is neither the old nor the new one: {digest}"
        return "old" if digest == old_digest else "new"

    def reset():
        if tree_digest(dest) != old_digest:
            shutil.rmtree(dest)
            shutil.copytree(tiny.bundle, dest)

    for delay in kill_schedule(window or 5.0, seed=5):  # in the export, the verification, ...
        outcome = run_writer(BUNDLE_SCRIPT, dest, 1, delay=delay)
        check_stale_names(dest, outcome["stale"])
        result = check()
        assert delay > 0 or (outcome["stale"] and result == "old"), "the kill at delay 0 should land mid-export"
        reset()
    finished = run_writer(BUNDLE_SCRIPT, dest, 1, delay=None)
    assert not finished["killed"] and not finished["stale"] and check() == "new"


# ------------------------------------------------------------------------------ the commit step
FOLDER_SWAP_SCRIPT = """
import os, signal, sys
from pathlib import Path
from meltok_runtime.io.atomic import atomic_directory
dest = Path(sys.argv[1])
real_replace = os.replace

def replace(src, dst, *args, **kwargs):  # die right after the old folder is moved away, if it ever is
    real_replace(src, dst, *args, **kwargs)
    if Path(src) == dest:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
with atomic_directory(dest) as tmp:
    (tmp / "data.txt").write_text("new")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="an atomic folder swap needs Linux renameat2(RENAME_EXCHANGE)")
def test_replacing_a_folder_never_leaves_it_missing(tmp_path):
    """A kill between taking the old folder away and renaming the new one in must not exist."""
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "data.txt").write_text("old")
    outcome = run_writer(FOLDER_SWAP_SCRIPT, dest, delay=None)
    assert dest.is_dir(), f"killed mid-commit, {dest.name} is gone (left: {sorted(os.listdir(tmp_path))})"
    assert (dest / "data.txt").read_text() in ("old", "new")
    assert not outcome["killed"] and (dest / "data.txt").read_text() == "new"
    assert not temporaries(dest)


def test_folders_get_the_permissions_of_a_plain_mkdir(tmp_path):
    """mkdtemp makes 0700 folders; a bundle or checkpoint must be readable like any other folder."""
    from meltok_runtime.io.atomic import atomic_directory

    umask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "x").write_text("x")
        with atomic_directory(tmp_path / "out") as tmp:  # the replacing path too
            (tmp / "x").write_text("y")
    finally:
        os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_outputs_never_touch_the_process_umask(tmp_path, monkeypatch):
    """Other threads create files meanwhile: reading the umask with os.umask would change it for them."""
    from meltok_runtime.io.atomic import atomic_directory, atomic_output

    umask = os.umask(0o027)
    os.umask(umask)  # read once here, before os.umask is made to refuse
    try:
        os.umask(0o027)

        def refuse(mask):
            raise AssertionError("os.umask was called")

        monkeypatch.setattr(os, "umask", refuse)
        with atomic_output(tmp_path / "file.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "x").write_text("x")
    finally:
        monkeypatch.undo()
        os.umask(umask)
    assert (tmp_path / "file.bin").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o750
