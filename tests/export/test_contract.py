"""The export contract (one declarative module, typed mismatch errors), the export package's import graph
(no cycles, no hidden ones in function-local imports), and where a bundle may be written."""
import ast
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from meltok_export.bundle import check_destination
from meltok_export.cli import main
from meltok_export.contract import GRAPH_FILES, check_graph_io, dynamic_axes, graph_specs
from meltok_export.errors import ContractError, ExportDestinationError
from meltok_runtime.manifest import GRAPH_NAMES

EXPORT = Path(__file__).resolve().parents[2] / "export"


def _imports(path: Path) -> set[str]:
    """Sibling modules ``path`` imports anywhere (top level or inside functions), relative or absolute."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("meltok_export."):
                found.add(node.module.split(".")[1])
    return found & {p.stem for p in EXPORT.glob("*.py")}


def test_export_modules_import_without_cycles():
    graph = {p.stem: _imports(p) - {p.stem} for p in EXPORT.glob("*.py") if p.stem != "__init__"}
    state = {}

    def visit(module, path):
        if state.get(module) == "open":
            raise AssertionError(f"import cycle: {' -> '.join(path + [module])}")
        if state.get(module) != "done":
            state[module] = "open"
            for target in sorted(graph.get(module, ())):
                visit(target, path + [module])
            state[module] = "done"
    for module in sorted(graph):
        visit(module, [])
    assert "verify" in graph["bundle"] and "quantize" in graph["bundle"]  # the bundle writer orchestrates
    assert not graph["onnx_export"] & {"quantize", "verify", "bundle"}
    assert not graph["verify"] & {"quantize", "tensorrt_build", "bundle"}


def test_graph_names_come_from_the_runtime_manifest(tiny_model):
    assert tuple(GRAPH_FILES) == GRAPH_NAMES
    specs = graph_specs(tiny_model)
    assert dynamic_axes(specs["decoder"][0]) == {"tokens": {0: "batch", 2: "columns"}}


def test_graph_io_mismatches_are_contract_errors(exported, tiny_model):
    model = onnx.load(str(exported("tiny", "fp32") / "encoder.onnx"))
    inputs, outputs = graph_specs(tiny_model)["encoder"]
    check_graph_io(model, "encoder", (*inputs, *outputs))
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    with pytest.raises(ContractError, match="'tokens' is int64 .* the contract says int32"):
        check_graph_io(model, "encoder", (*inputs, *outputs))
    model.graph.input[0].name = "waveform"
    with pytest.raises(ContractError, match="has tensors \\['waveform', 'tokens'\\]"):
        check_graph_io(model, "encoder", (*inputs, *outputs))


# ------------------------------------------------------------------------------------------- destinations
def test_a_folder_with_other_files_is_refused_and_survives(tiny_model_file, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    for extra in ([], ["--force"]):
        result = CliRunner().invoke(main, [str(tiny_model_file), "-o", str(folder), *extra])
        assert result.exit_code == 1 and "holds files that are not a bundle (holiday.jpg)" in result.output
        assert (folder / "holiday.jpg").read_bytes() == b"precious"


def test_a_previous_bundle_is_replaced_only_with_force(tiny_bundle, tmp_path):
    import shutil

    out = Path(shutil.copytree(tiny_bundle[0], tmp_path / "bundle"))
    with pytest.raises(ExportDestinationError, match="holds a bundle already; pass --force"):
        check_destination(out)
    assert check_destination(out, force=True) == out
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportDestinationError, match="notes.txt"):
        check_destination(out, force=True)


def test_current_folder_is_refused_up_front(tiny_model_file, tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("precious")
    monkeypatch.chdir(tmp_path)
    for target in (".", str(tmp_path.parent)):
        result = CliRunner().invoke(main, [str(tiny_model_file), "-o", target])
        assert result.exit_code == 1 and "is the current folder (or holds it)" in result.output
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, a folder nobody can write")
def test_read_only_destination_is_detected_before_the_work(tiny_model_file, monkeypatch):
    monkeypatch.setattr("meltok_export.cli._load_model", lambda path: pytest.fail("the work started"))
    result = CliRunner().invoke(main, [str(tiny_model_file), "-o", "/proc/meltok-bundle"])
    assert result.exit_code == 1 and "cannot write into '/proc'" in result.output
