"""The package metadata (setup.cfg) that the README's install commands rely on."""
import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$")


def _requirements(text: str) -> dict[str, str]:
    """``{normalised name: specifier}`` of a setup.cfg requirement list."""
    found = {}
    for line in text.strip().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = NAME.match(line).groups()
            found[name.lower().replace("_", "-")] = spec.strip()
    return found


@pytest.fixture(scope="module")
def metadata():
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",), inline_comment_prefixes=None)
    parser.read(ROOT / "setup.cfg")
    base = _requirements(parser["options"]["install_requires"])
    extras = {name: _requirements(text) for name, text in parser["options.extras_require"].items()}
    return base, extras


def test_no_install_puts_onnxruntime_beside_onnxruntime_gpu(metadata):
    base, extras = metadata
    assert "onnxruntime" not in base and "onnxruntime-gpu" not in base  # the base install names neither
    for name, requirements in extras.items():
        assert not {"onnxruntime", "onnxruntime-gpu"} <= set(requirements), name
    assert extras["cpu"] == {"onnxruntime": ">=1.17"} and "onnxruntime" in extras["all"]
    assert "onnxruntime-gpu" not in extras["all"]  # `all` is what installs without a GPU


def test_gpu_extra_requires_the_tf32_option(metadata):
    _, extras = metadata
    assert extras["gpu"] == {"onnxruntime-gpu": ">=1.18"}  # use_tf32 first shipped in onnxruntime-gpu 1.18


def _major_range(spec: str) -> tuple[int, int]:
    low = int(re.search(r">=\s*(\d+)", spec).group(1))
    high = int(re.search(r"<\s*(\d+)", spec).group(1))
    return low, high


@pytest.mark.parametrize("extra,tensorrt", [("trt", "tensorrt-lean-cu12"), ("trt-build", "tensorrt-cu12")])
def test_tensorrt_extras_pin_matching_majors(metadata, extra, tensorrt):
    """TensorRT 10 for CUDA 12 with CUDA 12 bindings; both bounded above, so no resolver mixes majors."""
    _, extras = metadata
    requirements = extras[extra]
    assert set(requirements) == {tensorrt, "cuda-python"}
    assert _major_range(requirements[tensorrt]) == (10, 11)
    cuda_low, cuda_high = _major_range(requirements["cuda-python"])
    assert (cuda_low, cuda_high) == (12, 13) and tensorrt.endswith(f"-cu{cuda_low}")
    assert "cu13" not in " ".join(requirements)


def test_runtime_messages_name_the_extras_that_exist(metadata):
    from meltok_runtime.backends import ort, trt

    _, extras = metadata
    named = set(re.findall(r"\.\[([a-z-]+)\]", " ".join([ort.CPU_INSTALL, ort.GPU_INSTALL, trt.TRT_RUNTIME_INSTALL,
                                                          trt.TRT_BUILD_INSTALL])))
    assert named == {"cpu", "gpu", "trt", "trt-build"} and named <= set(extras)
    assert "pypi.nvidia.com" in trt.TRT_BUILD_INSTALL and "meltok[" not in trt.TRT_RUNTIME_INSTALL


def test_readme_commands_install_an_onnx_runtime(metadata):
    """The README's main job runs meltok-rt, so its install command must name an extra with ONNX Runtime."""
    _, extras = metadata
    first = next(line for line in (ROOT / "README.md").read_text().splitlines() if "meltok-rt encode" in line)
    installed = re.search(r"pip install -e '\.\[([a-z,-]+)\]'", first)
    assert installed, first
    assert any("onnxruntime" in extras[name] for name in installed.group(1).split(","))


def test_serve_extra_brings_the_server_and_client_and_all_includes_it(metadata):
    _, extras = metadata
    assert {"starlette", "uvicorn", "websockets", "prometheus-client", "httpx"} == set(extras["serve"])
    assert set(extras["serve"]) <= set(extras["all"])
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",), inline_comment_prefixes=None)
    parser.read(ROOT / "setup.cfg")
    for extra in ("all", "serve-ray", "test"):  # the parser above keys ray[data] and ray[serve] both as "ray"
        assert "ray[serve]>=2.51" in parser["options.extras_require"][extra].split(), extra


def test_a_meltok_folder_in_the_current_directory_does_not_shadow_the_install(tmp_path):
    """Python started in the folder that holds a clone named ``meltok`` (or any ``meltok`` folder) still imports
    the installed packages: editable installs are plain path entries (setup.cfg's strict editable mode), which a
    namespace package in the current directory cannot hide, unlike the default mode's import hook."""
    import subprocess
    import sys

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "setup.cfg")
    assert parser["editable_wheel"]["mode"] == "strict"
    (tmp_path / "meltok").mkdir()
    (tmp_path / "meltok" / "notes.txt").write_text("not a package\n")
    result = subprocess.run([sys.executable, "-c", "from meltok import MelTok; import meltok_runtime, meltok_export"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_package_folder_is_listed_in_setup_cfg():
    """A sub-package missing from ``packages`` is left out of a wheel and of the strict editable install."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",), inline_comment_prefixes=None)
    parser.read(ROOT / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    folders = {"meltok": "meltok", "meltok_export": "export", "meltok_runtime": "runtime"}
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join((name, *init.parent.relative_to(ROOT / folder).parts)))
    assert found == listed
