"""Streams: one library serving several requests at once, each stream with its own VM and threads."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest

from compiler.build import compile_model
from compiler.examples import example_model
from compiler.runtime import CompiledModel, StreamedModel, load, measure_throughput
from targets.errors import InputError
from tests.test_cli import kiln


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("streams") / "tiny.so"
    onnx.save(example_model("tiny"), path.with_suffix(".onnx"))
    compile_model(path.with_suffix(".onnx"), path, target="host")
    return path


def test_n_streams_under_concurrent_load_give_the_single_stream_results(tiny):
    single = load(tiny, threads=2)
    inputs = [single.random_inputs(seed=i) for i in range(24)]
    expected = [single.run(x) for x in inputs]
    with load(tiny, threads=2, streams=2) as streamed:
        assert isinstance(streamed, StreamedModel) and streamed.threads_per_stream == 1
        got: dict[int, dict] = {}

        def caller(indices):  # several client threads calling run() at once
            for i in indices:
                got[i] = streamed.run(inputs[i])

        clients = [threading.Thread(target=caller, args=(range(k, 24, 3),)) for k in range(3)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        futures = [streamed.submit(x) for x in inputs]  # and the async form
        for i, future in enumerate(futures):
            for name, value in expected[i].items():
                np.testing.assert_array_equal(got[i][name], value)
                np.testing.assert_array_equal(future.result()[name], value)
        names = {t.name for t in threading.enumerate()}
        assert {"kiln-stream-0", "kiln-stream-1"} <= names  # two workers served them
    assert not {t.name for t in threading.enumerate()} & {"kiln-stream-0", "kiln-stream-1"}  # closed


def test_a_bad_input_fails_in_the_callers_thread_and_the_streams_keep_serving(tiny):
    with load(tiny, threads=2, streams=2) as streamed:
        with pytest.raises(InputError, match="shape"):
            streamed.submit(np.zeros((1, 3, 8, 8), np.float32))
        x = streamed.random_inputs(seed=3)
        assert streamed.run(x).keys() == {s.name for s in streamed.outputs}
    with pytest.raises(InputError, match="closed"):
        streamed.submit(x)


def test_streams_never_oversubscribe(tiny):
    with pytest.raises(InputError, match="3 streams need at least 3 threads"):
        load(tiny, threads=2, streams=3)
    with pytest.raises(InputError, match="at least 1"):
        load(tiny, threads=2, streams=0)
    assert isinstance(load(tiny, threads=2, streams=1), CompiledModel)


def test_throughput_counts_every_request(tiny):
    with load(tiny, threads=2, streams=2) as streamed:
        stats = measure_throughput(streamed, requests=30)
    assert stats.streams == 2 and stats.threads_per_stream == 1 and stats.requests == 30
    assert stats.latency.runs == 30 and stats.per_second > 0


def test_cli_benchmarks_each_stream_count(tiny):
    done = kiln("run", str(tiny), "--threads", "2", "--streams", "2", "--bench", "10")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "stream(s)" in line]
    assert len(lines) == 2 and lines[0].startswith("kiln  1 stream(s) x 2") and "2 stream(s) x 1" in lines[1]
    assert all("inferences/s" in line and "identical to 1 stream" in line for line in lines)
    done = kiln("run", str(tiny), "--threads", "2", "--streams", "4", "--bench", "10")
    assert done.returncode == 2 and "4 streams need at least 4 threads" in done.stderr
