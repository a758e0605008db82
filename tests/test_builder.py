"""kiln's candidate builder: a failing or runaway candidate costs only itself."""

from __future__ import annotations

import time

import schedules.builder as builder


def test_a_failing_build_returns_its_error(monkeypatch):
    def broken(_input, _path):
        raise ValueError("no such intrinsic")

    monkeypatch.setattr(builder, "_compile_to", broken)
    assert builder.build_in_child(None, "/nonexistent/x.tar", timeout=30) == "ValueError: no such intrinsic"


def test_a_runaway_build_is_killed_at_the_timeout(monkeypatch):
    monkeypatch.setattr(builder, "_compile_to", lambda _input, _path: time.sleep(60))
    start = time.monotonic()
    assert builder.build_in_child(None, "/nonexistent/x.tar", timeout=1) == "build timed out after 1 s"
    assert time.monotonic() - start < 10


def test_a_build_that_kills_its_process_is_reported(monkeypatch):
    import os
    import signal

    def die(_input, _path):  # e.g. the kernel's OOM killer
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(builder, "_compile_to", die)
    assert "died" in builder.build_in_child(None, "/nonexistent/x.tar", timeout=30)


def test_children_build_in_parallel_and_each_keeps_its_own_result(monkeypatch, tmp_path):
    """Each child logs when it starts and ends; with 2 workers two builds overlap, never three."""
    import os

    def compile_one(build_input, _path):
        (tmp_path / f"{os.getpid()}.start").write_text(str(time.monotonic()))
        time.sleep(0.5)
        (tmp_path / f"{os.getpid()}.end").write_text(str(time.monotonic()))
        if build_input == "bad":
            raise RuntimeError("bad candidate")

    monkeypatch.setattr(builder, "_compile_to", compile_one)
    errors = builder.build_in_children(["ok", "bad", "ok", "bad"], ["/x"] * 4, timeout=30, workers=2)
    assert errors == [None, "RuntimeError: bad candidate", None, "RuntimeError: bad candidate"]
    spans = [(float(start.read_text()), float(start.with_suffix(".end").read_text()))
             for start in tmp_path.glob("*.start")]
    assert len(spans) == 4
    running = [sum(s <= t < e for s, e in spans) for t, _ in spans]  # builds running as each one starts
    assert max(running) == 2


def test_a_timeout_in_one_child_leaves_the_others_alone(monkeypatch):
    monkeypatch.setattr(builder, "_compile_to",
                        lambda build_input, _path: time.sleep(60 if build_input == "slow" else 0.1))
    errors = builder.build_in_children(["slow", "fast", "fast"], ["/x"] * 3, timeout=2, workers=2)
    assert errors == ["build timed out after 2 s", None, None]
