"""``kiln tune`` measuring through TVM's RPC tracker: a tracker and two servers on 127.0.0.1.

The tracker and servers are TVM's own command-line tools, started as subprocesses in
their own process groups and killed in the fixture's teardown whatever happens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from targets.errors import KilnError
from compiler.tune import TuneOptions, tune_model

KEY = "kiln-test"
LOOPBACK = "127.0.0.1"
TOLERANCE = 1e-4  # max abs error relative to the output scale


def matmul_relu() -> onnx.ModelProto:
    """y = relu(x[1x64] @ w[64x64]): one tunable kernel, tuned in seconds."""
    w = numpy_helper.from_array(np.random.default_rng(0).uniform(-1, 1, (64, 64)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])], "matmul_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own process group: teardown kills its workers too


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)  # the group this fixture created (pgid == pid)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            # forked RPC session workers may outlive the group leader: make sure the group is empty
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


class Cluster:
    def __init__(self, port: int, procs: list[subprocess.Popen], logs: list[Path]):
        self.port, self.procs, self.logs = port, procs, logs

    @property
    def tracker(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs)


def _wait_for_servers(cluster: Cluster, count: int, timeout: float = 60) -> None:
    from tvm import rpc

    deadline = time.monotonic() + timeout
    free = 0
    while time.monotonic() < deadline:
        for proc in cluster.procs:
            if proc.poll() is not None:
                pytest.fail(f"an RPC process exited with {proc.returncode}\n{cluster.log_text()}")
        try:
            summary = rpc.connect_tracker(LOOPBACK, cluster.port).summary()
            free = summary["queue_info"].get(KEY, {}).get("free", 0)
            if free >= count:
                return
        except (OSError, RuntimeError):  # tracker not listening yet
            pass
        time.sleep(0.5)
    pytest.fail(f"only {free} of {count} RPC servers registered within {timeout:.0f} s\n{cluster.log_text()}")


@pytest.fixture(scope="module")
def rpc_cluster(tmp_path_factory):
    """A tracker and two RPC servers with key ``kiln-test``, all bound to 127.0.0.1."""
    logs_dir = tmp_path_factory.mktemp("rpc")
    env = dict(os.environ, TVM_NUM_THREADS="1", TVM_BIND_THREADS="0")
    port = _free_port()
    procs, logs = [], []
    try:
        logs.append(logs_dir / "tracker.log")
        procs.append(_start(["tvm.exec.rpc_tracker", "--host", LOOPBACK, "--port", str(port),
                             "--port-end", str(port + 1)], logs[-1], env))
        for i in range(2):
            server_port = _free_port()
            logs.append(logs_dir / f"server{i}.log")
            procs.append(_start(["tvm.exec.rpc_server", "--tracker", f"{LOOPBACK}:{port}", "--key", KEY,
                                 "--host", LOOPBACK, "--port", str(server_port), "--port-end", str(server_port + 1)],
                                logs[-1], env))
        cluster = Cluster(port, procs, logs)
        # What tuning imports first (~11 s on 2 cores): done here, it overlaps the servers' start-up.
        from schedules.intrinsics import import_tensor_intrinsics

        import_tensor_intrinsics()
        _wait_for_servers(cluster, 2)
        yield cluster
    finally:
        for proc in procs:
            _stop(proc)


class SocketWatch:
    """Samples the inet sockets of this process, its children and the RPC processes while a test runs."""

    def __init__(self, extra_pids: list[int]):
        self.extra_pids = extra_pids
        self.seen: set[tuple[str, str, int, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _processes(self):
        import psutil

        procs = [psutil.Process()]
        for pid in self.extra_pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        return procs + [child for p in list(procs) for child in self._children(p)]

    @staticmethod
    def _children(proc):
        import psutil

        try:
            return proc.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> None:
        import psutil

        for proc in self._processes():
            try:
                for conn in proc.net_connections(kind="inet"):
                    if conn.laddr:
                        self.seen.add((proc.name(), conn.laddr.ip, conn.laddr.port, conn.status))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def __enter__(self) -> "SocketWatch":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _record_lines(db: Path) -> int:
    path = db / "database_tuning_record.json"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


@pytest.mark.slow
def test_tune_measures_through_rpc_tracker(rpc_cluster, tmp_path):
    from compiler.build import compile_model
    from compiler.reference import OnnxRuntimeReference, max_abs_diff
    from compiler.runtime import load

    model = matmul_relu()
    db = tmp_path / "db"
    options = TuneOptions(trials=8, trials_per_iter=4, rpc_tracker=rpc_cluster.tracker, rpc_key=KEY, progress=False,
                          population=64)
    with SocketWatch([p.pid for p in rpc_cluster.procs]) as watch:
        report = tune_model(model, db, options)

    assert report.trials_run > 0, rpc_cluster.log_text()
    assert _record_lines(db) > 0
    assert any(t.best_ms is not None for t in report.tasks)
    # The candidates were loaded and run by the RPC servers, not in this process.
    server_logs = "".join(p.read_text(errors="replace") for p in rpc_cluster.logs[1:])
    assert server_logs.count("load_module") >= report.trials_run, rpc_cluster.log_text()
    # Nothing involved listened on, or bound to, anything but the loopback address.
    listening = {s for s in watch.seen if s[3] == "LISTEN"}
    assert len(listening) >= 3, watch.seen  # the tracker and both servers were seen
    assert {ip for _, ip, _, _ in watch.seen} == {LOOPBACK}, sorted(watch.seen)

    lib = tmp_path / "tuned.so"
    compile_model(model, lib, target="host", db=db)
    compiled = load(lib, threads=2)
    inputs = compiled.random_inputs(seed=3)
    _, rel = max_abs_diff(compiled.run(inputs), OnnxRuntimeReference(model, 2).run(inputs))
    assert rel <= TOLERANCE


@pytest.mark.parametrize("tracker, key, words", [
    ("127.0.0.1:9190", None, "--rpc-key"),
    ("127.0.0.1", KEY, "HOST:PORT"),
    ("127.0.0.1:port", KEY, "HOST:PORT"),
])
def test_bad_rpc_options_are_kiln_errors(tracker, key, words, tmp_path):
    options = TuneOptions(trials=4, trials_per_iter=4, rpc_tracker=tracker, rpc_key=key, progress=False)
    with pytest.raises(KilnError, match=words):
        tune_model(matmul_relu(), tmp_path / "db", options)
    assert not (tmp_path / "db").exists()  # refused before anything was created or imported


def test_cli_bad_rpc_options_exit_2_with_one_line(tmp_path, capsys):
    """In process (``compiler.cli.main``): a fresh ``python -m compiler`` would pay TVM's imports per call."""
    from compiler.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(matmul_relu(), path)
    cases = ((["--rpc-tracker", "127.0.0.1:9190"], "--rpc-key"),
             (["--rpc-tracker", "nohost", "--rpc-key", KEY], "HOST:PORT"))
    for rpc_args, word in cases:
        capsys.readouterr()
        code = main(["tune", str(path), "--db", str(tmp_path / "db"), "--trials", "4", "--no-progress", *rpc_args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(lines) == 1 and lines[0].startswith("kiln: error:") and word in lines[0], lines


@pytest.mark.parametrize("host, trusted, warns", [
    ("127.0.0.1", (), False), ("localhost", (), False), ("::1", (), False),
    ("192.168.1.10", (), True), ("192.168.1.10", ("192.168.1.10",), False), ("10.1.2.3", ("10.9.9.9",), True),
    ("8.8.8.8", (), True), ("8.8.8.8", ("8.8.8.8",), True),  # a public address is never trusted
])
def test_a_tracker_beyond_loopback_is_warned_about_unless_trusted(host, trusted, warns):
    from schedules.tune import rpc_tracker_warning

    warning = rpc_tracker_warning(host, trusted)
    assert (warning is not None) == warns
    if warns:
        assert "unauthenticated" in warning and "SSH tunnel" in warning and f"--rpc-trust {host}" in warning


def test_tune_logs_the_tracker_warning_before_anything_slow(caplog):
    import logging

    from compiler.tune import TuneOptions
    from schedules.tune import check_rpc_options

    with caplog.at_level(logging.WARNING, logger="schedules.tune"):
        check_rpc_options(TuneOptions(rpc_tracker="192.168.1.10:9190", rpc_key="rpi4"))
        check_rpc_options(TuneOptions(rpc_tracker="127.0.0.1:9190", rpc_key="rpi4"))
    assert len(caplog.records) == 1 and "unauthenticated" in caplog.records[0].getMessage()
