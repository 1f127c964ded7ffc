"""Dynamic batching: the batcher gathers equal shapes only, and concurrent clients of a real server get
exactly what the library gives each of them alone, batched or not."""
import re
import threading
import time

import httpx
import numpy as np
import pytest

from meltok_runtime import Codec
from meltok_runtime.serve.batcher import Batcher
from meltok_runtime.serve.client import Client

from .serve_helpers import running_server
from .test_serve import RATE, stream_reference


class RecordingGraph:
    """``x -> 2x``, recording the batch shapes it ran and the most calls it saw at once."""

    def __init__(self, delay: float = 0.0):
        self.shapes, self.delay, self.running, self.most = [], delay, 0, 0
        self.lock = threading.Lock()

    def __call__(self, inputs):
        with self.lock:
            self.shapes.append(inputs.shape)
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        if np.isnan(inputs).any():
            raise ValueError("NaN in the batch")
        return inputs * 2


def call_together(batcher, inputs: list) -> list:
    """Call ``batcher`` from one thread per input, all at once; results in input order."""
    results, barrier = [None] * len(inputs), threading.Barrier(len(inputs))

    def run(index):
        barrier.wait()
        try:
            results[index] = batcher(inputs[index])
        except ValueError as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_equal_shapes_share_a_call_and_other_shapes_wait_for_their_own():
    graph = RecordingGraph()
    batcher = Batcher(graph, max_batch=8, max_wait_s=0.5)
    inputs = [np.full((1, 5), i, np.float32) for i in range(4)] + [np.full((1, 7), 9, np.float32)]
    results = call_together(batcher, inputs)
    batcher.close()
    for given, got in zip(inputs, results):
        np.testing.assert_array_equal(got, given * 2)
    assert sorted(graph.shapes) == [(1, 7), (4, 5)]


def test_max_batch_bounds_each_call_and_one_runs_every_call_alone():
    graph = RecordingGraph(delay=0.01)
    batcher = Batcher(graph, max_batch=3, max_wait_s=0.3)
    call_together(batcher, [np.ones((1, 4), np.float32)] * 7)
    batcher.close()
    assert sum(shape[0] for shape in graph.shapes) == 7 and max(shape[0] for shape in graph.shapes) == 3
    alone = RecordingGraph(delay=0.01)
    batcher = Batcher(alone, max_batch=1, max_wait_s=0.3)
    results = call_together(batcher, [np.full((1, 4), i, np.float32) for i in range(5)])
    batcher.close()
    assert alone.shapes == [(1, 4)] * 5 and alone.most == 1
    assert [float(r[0, 0]) for r in results] == [0, 2, 4, 6, 8]


def test_a_lone_registered_user_does_not_wait_and_registered_users_still_share_a_call():
    graph = RecordingGraph()
    batcher = Batcher(graph, max_batch=8, max_wait_s=2.0)
    with batcher.user():
        started = time.monotonic()
        np.testing.assert_array_equal(batcher(np.ones((1, 3), np.float32)), np.full((1, 3), 2))
        assert time.monotonic() - started < 1.0  # nobody else can call: no 2 s wait

    results, registered = [None, None], threading.Barrier(3)

    def user(index, delay):
        with batcher.user():
            registered.wait()
            time.sleep(delay)  # the second user calls later, within the wait
            results[index] = batcher(np.full((1, 3), index, np.float32))

    threads = [threading.Thread(target=user, args=(i, 0.3 * i)) for i in range(2)]
    for thread in threads:
        thread.start()
    registered.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join(30)
    batcher.close()
    assert graph.shapes == [(1, 3), (2, 3)] and time.monotonic() - started < 1.5  # both in one call, no full wait
    np.testing.assert_array_equal(results[1], np.full((1, 3), 2))


def test_workers_run_that_many_graph_calls_at_once():
    graph = RecordingGraph(delay=0.3)
    batcher = Batcher(graph, max_batch=1, max_wait_s=0.0, workers=3)
    results = call_together(batcher, [np.full((1, 2), i, np.float32) for i in range(6)])
    batcher.close()
    assert graph.most == 3 and graph.shapes == [(1, 2)] * 6  # alone, but side by side
    assert [float(r[0, 0]) for r in results] == [0, 2, 4, 6, 8, 10]


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    batcher = Batcher(RecordingGraph(), max_batch=4, max_wait_s=0.2)
    results = call_together(batcher, [np.ones((1, 3), np.float32), np.full((1, 3), np.nan, np.float32)])
    assert all(isinstance(result, ValueError) for result in results)
    np.testing.assert_array_equal(batcher(np.ones((1, 3), np.float32)), np.full((1, 3), 2))
    batcher.close()


def test_onnx_runtime_cpu_gives_each_item_of_a_batch_its_result_alone(real_clips):
    """The premise of exact batched serving: equal-shape items batched = each run alone, bit for bit."""
    with Codec.open(backend="ort-cpu", threads=1) as codec:
        n = 20 * codec.column_samples - codec.hop_length
        audio = np.stack([codec.prepare(real_clips[name][:n])[0] for name in ("music", "speech", "effects")])
        tokens = codec._encode_graph(audio)
        for index in range(3):
            np.testing.assert_array_equal(tokens[index:index + 1], codec._encode_graph(audio[index:index + 1]))
        decoded = codec._decode_graph(tokens.astype(np.int64))
        for index in range(3):
            np.testing.assert_array_equal(decoded[index:index + 1],
                                          codec._decode_graph(tokens[index:index + 1].astype(np.int64)))


def batch_sizes(url: str) -> tuple[float, float]:
    """(items, graph calls) over both graphs, from the batch-size histogram."""
    text = httpx.get(f"{url}/metrics").text
    total = sum(float(v) for v in re.findall(r"^meltok_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
    calls = sum(float(v) for v in re.findall(r"^meltok_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
    return total, calls


@pytest.mark.parametrize("max_batch", [16, 1])
def test_concurrent_clients_get_exactly_what_the_library_gives_each_alone(real_clips, max_batch):
    clips = [real_clips[name][start * RATE:(start + 2) * RATE] for name in ("music", "speech", "effects")
             for start in (0, 1)][:4]  # four clients, equal lengths so that their windows can share calls
    with Codec.open(backend="ort-cpu", threads=1) as codec:
        expected = []
        for clip in clips:
            tokens = codec.encode(clip)
            expected.append((tokens, codec.decode(tokens, num_samples=len(clip))[0], stream_reference(codec, tokens[0])))
    with running_server(max_batch=max_batch, max_wait_ms=100) as (url, _):
        before = batch_sizes(url)
        got, barrier = [None] * len(clips), threading.Barrier(len(clips))

        def client_work(index):
            with Client(url) as client:
                barrier.wait()
                token_file = client.encode(clips[index], RATE)
                barrier.wait()
                decoded = client.decode(token_file.tokens, len(clips[index]))
                barrier.wait()
                got[index] = (token_file.tokens, decoded, client.stream_decode(token_file.tokens[0]))

        threads = [threading.Thread(target=client_work, args=(i,)) for i in range(len(clips))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        items, calls = (after - start for after, start in zip(batch_sizes(url), before))
    for (tokens, decoded, streamed), (want_tokens, want_decoded, want_streamed) in zip(got, expected):
        np.testing.assert_array_equal(tokens, want_tokens)
        np.testing.assert_array_equal(decoded, want_decoded)
        np.testing.assert_array_equal(streamed, want_streamed)
    print(f"max_batch {max_batch}: {items:.0f} items in {calls:.0f} graph calls")
    if max_batch == 1:
        assert items == calls
    else:
        assert items > calls  # some calls carried several clients' windows
