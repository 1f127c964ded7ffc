"""``meltok-rt info`` on token files, and ``--threads`` beyond the cores this process may use."""
import json
import os

from click.testing import CliRunner

from meltok_runtime import codec as codec_module
from meltok_runtime.cli.main import main
from meltok_runtime.io.tokenfile import read_tokens

from .conftest import DATA


def run(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_info_describes_a_token_file(tiny_bundle, tmp_path):
    tokens = tmp_path / "speech.mtok"
    assert run("encode", DATA / "speech.flac", "-b", tiny_bundle, "-o", tokens, "--backend", "ort-cpu").exit_code == 0
    result = run("info", tokens)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    token_file = read_tokens(tokens)
    assert report["kind"] == "tokens" and report["model_id"] == token_file.model_id
    assert report["shape"] == list(token_file.tokens.shape) and report["num_samples"] == token_file.num_samples
    assert abs(report["seconds"][0] - 4.89) < 0.01  # speech.flac lasts 4.890 s
    broken = tmp_path / "broken.mtok"
    broken.write_bytes(b"not a token file")
    result = run("info", broken)
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "magic" in result.stderr


def test_threads_above_the_core_count_are_clamped_with_a_warning(tiny_bundle, tmp_path, monkeypatch, caplog):
    cores = len(os.sched_getaffinity(0))
    opened = []
    real_open = codec_module.Codec.open.__func__

    def spy(cls, bundle=None, backend="auto", threads=None, **kwargs):
        opened.append(threads)
        return real_open(cls, bundle, backend, threads, **kwargs)

    monkeypatch.setattr(codec_module.Codec, "open", classmethod(spy))
    result = run("encode", DATA / "effects.flac", "-b", tiny_bundle, "-o", tmp_path / "e.mtok", "--backend",
                 "ort-cpu", "--threads", cores + 62)
    assert result.exit_code == 0, result.output
    assert opened == [cores]
    assert f"--threads {cores + 62} is more than the {cores} CPU core(s)" in caplog.text
    result = run("encode", DATA / "effects.flac", "-b", tiny_bundle, "-o", tmp_path / "f.mtok", "--backend",
                 "ort-cpu", "--threads", 1)
    assert result.exit_code == 0 and opened == [cores, 1]
