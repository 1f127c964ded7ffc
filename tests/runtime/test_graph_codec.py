"""``GraphCodec``: the runtime's pipeline over graph calls that someone else runs (a model server's)."""
import numpy as np
import pytest
import soundfile

from meltok_runtime import Codec, SettingsError
from meltok_runtime.codec import DEFAULT_BUNDLE
from meltok_runtime.graph_codec import GraphCodec

from .conftest import DATA


@pytest.fixture(scope="module")
def codec():
    with Codec.open(DEFAULT_BUNDLE, backend="ort-cpu", threads=1) as opened:
        yield opened


def test_given_graph_calls_are_batched_by_max_batch_and_give_the_codecs_results(codec):
    audio, rate = soundfile.read(DATA / "speech.flac", dtype="float32", always_2d=True)
    batch = np.stack([audio[i * 20000:i * 20000 + 30000, i % 2] for i in range(5)])  # 5 real excerpts
    shapes = []

    def encode_graph(array):
        shapes.append(array.shape)
        return codec._run_encoder(array)

    remote = GraphCodec(codec.manifest, encode_graph, codec._run_decoder, max_batch=2)
    assert remote.max_batch == 2 and remote.windows == codec.windows and remote.model_id == codec.model_id
    tokens = remote.encode(batch, rate)
    assert [shape[0] for shape in shapes] == [2, 2, 1]
    np.testing.assert_array_equal(tokens, codec.encode(batch, rate))
    np.testing.assert_array_equal(remote.decode(tokens, 30000), codec.decode(tokens, 30000))
    assert GraphCodec(codec.manifest, encode_graph, codec._run_decoder, max_batch=64).max_batch == 16  # the bundle's


@pytest.mark.parametrize("max_batch", [0, -1, 2.5, True])
def test_bad_max_batch_is_refused(codec, max_batch):
    with pytest.raises(SettingsError, match="max_batch"):
        GraphCodec(codec.manifest, codec._run_encoder, codec._run_decoder, max_batch=max_batch)
