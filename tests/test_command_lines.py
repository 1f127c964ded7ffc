"""What every command line (``meltok``, ``meltok-rt``, ``meltok-export``) promises before any work:
``--version``, one-line usage errors (exit 2), one-line ``--device`` errors (exit 1), and on the
runtime-only install (torch blocked) one line naming the extra to install instead of a traceback."""
import json
import subprocess
import sys
import textwrap
from importlib import metadata

import numpy as np
import pytest
from click.testing import CliRunner

import meltok
import meltok_export
import meltok_runtime
from meltok.cli import main as meltok_main
from meltok_export.cli import main as export_main
from meltok_runtime.cli.main import main as runtime_main

COMMAND_LINES = {"meltok": meltok_main, "meltok-rt": runtime_main, "meltok-export": export_main}
ANY_FILE = meltok_runtime.__file__  # an existing input path, for commands stopped before they read it


def run_blocking_torch(module: str, prog: str, *args) -> subprocess.CompletedProcess:
    """Run a command line in a fresh interpreter in which ``import torch`` fails (the runtime-only install)."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        from {module} import main
        sys.argv[0] = {prog!r}
        main()
    """)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in text, text
    return lines[0]


def test_every_package_and_command_line_has_the_installed_version():
    version = metadata.version("meltok")
    assert meltok.__version__ == meltok_runtime.__version__ == meltok_export.__version__ == version
    for name, command in COMMAND_LINES.items():
        result = CliRunner().invoke(command, ["--version"], prog_name=name)
        assert result.exit_code == 0 and result.output == f"{name} {version}\n", result.output


@pytest.mark.parametrize("name, args, expected", [
    ("meltok", ["encode", "song.flac"], "Missing option '-o' / '--output'; see 'meltok encode --help'"),
    ("meltok", ["encdoe"], "No such command 'encdoe'"),
    ("meltok", ["data", "clips"], "Missing argument 'CORPUS'; see 'meltok data clips --help'"),
    ("meltok", ["train", "stage1", "--data", "c"], "Missing option '-o' / '--output'"),
    ("meltok-rt", ["decode", "x.mtok", "--bogus"], "No such option '--bogus'"),
    ("meltok-rt", ["encode", "a.wav", "-o", "."], "is a directory"),
    ("meltok-export", ["model.safetensors"], "Missing option '-o' / '--output'"),
])
def test_usage_errors_are_one_line_with_exit_code_2(name, args, expected):
    result = CliRunner().invoke(COMMAND_LINES[name], args, prog_name=name)
    assert result.exit_code == 2
    assert expected in one_line(result.output)


@pytest.mark.parametrize("device, expected", [("cuda", "no CUDA GPU is usable here"),
                                              ("tpu", "'tpu' is not a torch device")])
@pytest.mark.parametrize("command", ["encode", "decode", "eval", "train"])
def test_unavailable_device_is_one_line_naming_the_available_ones(command, device, expected, tmp_path,
                                                                  real_clip_paths):
    import torch

    from meltok.default_model import default_model_path
    from meltok_runtime.io.tokenfile import write_tokens

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    tokens = tmp_path / "t.mtok"
    write_tokens(tokens, np.zeros((1, 12, 4), dtype=np.int64), sample_rate=44100, num_samples=7000,
                 model_id="meltok-edge:73d172a93409", codebook_size=8192)
    args = {"encode": ["encode", real_clip_paths["speech"], "-o", tmp_path / "x.mtok"],
            "decode": ["decode", tokens, "-o", tmp_path / "x.wav"],
            "eval": ["eval", default_model_path(), real_clip_paths["speech"].parent],
            "train": ["train", "stage1", "--data", tmp_path, "-o", tmp_path / "run"]}[command]
    result = CliRunner().invoke(meltok_main, [*map(str, args), "--device", device], prog_name="meltok")
    assert result.exit_code == 1
    line = one_line(result.output)
    assert expected in line and "available here: cpu" in line
    assert [p.name for p in tmp_path.iterdir()] == ["t.mtok"]  # nothing written


def test_meltok_without_torch_shows_help_reads_token_files_and_names_the_extra(tmp_path):
    from meltok_runtime.io.tokenfile import write_tokens

    tokens = tmp_path / "t.mtok"
    write_tokens(tokens, np.zeros((1, 12, 4), dtype=np.int64), sample_rate=44100, num_samples=7000,
                 model_id="meltok-edge:73d172a93409", codebook_size=8192)
    help_text = run_blocking_torch("meltok.cli", "meltok", "--help")
    assert help_text.returncode == 0 and "Usage: meltok" in help_text.stdout, help_text.stderr
    version = run_blocking_torch("meltok.cli", "meltok", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"meltok {meltok_runtime.__version__}"
    info = run_blocking_torch("meltok.cli", "meltok", "info", tokens)
    assert info.returncode == 0 and json.loads(info.stdout)["kind"] == "tokens", info.stderr
    encode = run_blocking_torch("meltok.cli", "meltok", "encode", ANY_FILE, "-o", tmp_path / "x.mtok")
    assert encode.returncode == 1
    line = one_line(encode.stderr)
    assert "'torch'" in line and "pip install -e '.[train]'" in line
    assert not (tmp_path / "x.mtok").exists()


def test_meltok_export_without_torch_names_the_export_extra(tmp_path):
    result = run_blocking_torch("meltok_export.cli", "meltok-export", ANY_FILE, "-o", tmp_path / "bundle")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "'torch'" in line and "pip install -e '.[export]'" in line
    assert not (tmp_path / "bundle").exists()
    assert run_blocking_torch("meltok_export.cli", "meltok-export", "--help").returncode == 0


def _commands(command, path=()):
    """``(path, command)`` of every command under a click group, the group's own included."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_one_vocabulary_across_the_command_lines():
    """-o/--output for every output, -y/--force for every replacement, --format only ever an audio file format."""
    seen = []
    for prog, main in COMMAND_LINES.items():
        for path, command in _commands(main):
            for param in command.params:
                names, where = set(param.opts) | set(param.secondary_opts), " ".join((prog, *path))
                seen.append(where)
                assert "--out" not in names, where
                if "--output" in names:
                    assert "-o" in names, where
                if "--force" in names:
                    assert "-y" in names, where
                if "--format" in names:
                    assert set(param.type.choices) <= {"wav", "flac", "ogg"}, where
    assert "meltok train stage1" in seen and "meltok-rt detokenize" in seen and "meltok-export" in seen
