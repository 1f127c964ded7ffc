"""The runtime never imports torch, ``meltok`` or ``meltok_export``, and imports without its optional
dependencies (tensorrt, cuda-python, onnxruntime)."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import meltok_runtime

from .conftest import DATA

RUNTIME = Path(meltok_runtime.__file__).resolve().parent
MODULES = sorted("meltok_runtime." + ".".join(p.relative_to(RUNTIME).with_suffix("").parts)
                 for p in RUNTIME.rglob("*.py") if p.name != "__init__.py")


def run_python(code: str, *args, blocked=("torch",)) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which importing any of ``blocked`` fails."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_runtime_sources_never_import_torch_or_the_other_packages():
    forbidden = {"torch", "meltok", "meltok_export", "torchaudio"}
    for path in RUNTIME.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path} imports {name}"


def test_encode_and_decode_with_torch_blocked(tiny_bundle):
    result = run_python("""
        import numpy as np
        from meltok_runtime import Codec
        with Codec.open(sys.argv[1], backend="ort-cpu") as codec:
            audio = np.random.default_rng(0).standard_normal(30000).astype(np.float32) * 0.1
            tokens = codec.encode(audio)
            decoded = codec.decode(tokens, num_samples=30000)
        assert tokens.shape == (1, 12, 15) and decoded.shape == (1, 30000), (tokens.shape, decoded.shape)
        assert sys.modules.get("torch") is None
        assert not [name for name in sys.modules if name.split(".")[0] in ("meltok", "meltok_export", "torchaudio")]
        print("ok")
    """, tiny_bundle)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_command_line_with_torch_blocked(tiny_bundle, tmp_path):
    cli = "from meltok_runtime.cli.main import main\nsys.argv[0] = 'meltok-rt'\nmain()\n"
    encoded = run_python(cli, "encode", DATA / "music48k.flac", "-b", tiny_bundle, "-o", tmp_path / "x.mtok")
    assert encoded.returncode == 0, encoded.stderr
    assert "resampling" in encoded.stderr and "48000 Hz to 44100 Hz" in encoded.stderr  # warnings on stderr
    decoded = run_python(cli, "decode", tmp_path / "x.mtok", "-b", tiny_bundle, "-o", tmp_path / "x.wav")
    assert decoded.returncode == 0, decoded.stderr
    assert (tmp_path / "x.wav").is_file()
    failed = run_python(cli, "decode", tmp_path / "missing.mtok", "-b", tiny_bundle, "-o", tmp_path / "y.wav")
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr


def test_every_module_imports_without_optional_dependencies(tiny_bundle):
    result = run_python(f"""
        import importlib
        for name in {MODULES!r}:
            importlib.import_module(name)
        from meltok_runtime import BackendError, Codec
        for backend, expected in [("ort-cpu", "install it with: pip install -e '.[cpu]'"), ("trt", "no TensorRT engine")]:
            try:
                Codec.open(sys.argv[1], backend=backend)
            except BackendError as error:
                assert expected in str(error), str(error)
            else:
                raise AssertionError(backend + " opened without its library")
        print("ok")
    """, tiny_bundle, blocked=("torch", "onnxruntime", "tensorrt", "cuda"))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_package_import_is_light():
    result = run_python("""
        import meltok_runtime, meltok_runtime.cli.main
        heavy = [name for name in ("onnxruntime", "soundfile", "soxr", "meltok_runtime.codec") if name in sys.modules]
        assert not heavy, heavy
        assert meltok_runtime.Codec.__name__ == "Codec"
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
