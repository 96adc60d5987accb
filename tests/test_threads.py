"""Thread policy: training gives cores back to busy neighbours and takes them again later."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tuneforge.train.threads import ThreadPolicyCallback, fixed_by_user, threads_for_free_cores


def test_threads_for_free_cores():
    assert [threads_for_free_cores(2, busy) for busy in (0.0, 0.4, 0.6, 1.0, 1.9, 5.0)] == [2, 2, 1, 1, 1, 1]
    assert threads_for_free_cores(8, 2.2) == 6
    assert threads_for_free_cores(1, 0.0) == 1


def test_fixed_by_user(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TUNEFORGE_ADAPT_THREADS", raising=False)
    assert not fixed_by_user()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert fixed_by_user()
    monkeypatch.setenv("TUNEFORGE_ADAPT_THREADS", "1")  # the web UI: a maximum, not a fixed count
    assert not fixed_by_user()


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_callback_follows_the_other_processes_load(clean_env):
    # (machine busy CPU-s, own CPU-s, wall s) at train begin and at each step end
    samples = iter([
        (0.0, 0.0, 0.0),
        (19.0, 19.0, 10.0),   # 10 s: we used ~1.9 cores, nobody else -> stay at 2
        (39.0, 29.0, 20.0),   # next 10 s: machine 2.0 cores busy, we 1.0 -> others ~1.0 -> 1 thread
        (40.0, 29.5, 25.0),   # only 5 s since the last check: no decision
        (49.0, 39.0, 30.0),   # others 0 again -> back to 2
    ])
    threads = {"n": 2}
    calls = []

    def set_threads(n):
        calls.append(n)
        threads["n"] = n

    callback = ThreadPolicyCallback(sample=lambda: next(samples), set_threads=set_threads,
                                    get_threads=lambda: threads["n"])
    args = SimpleNamespace(device=SimpleNamespace(type="cpu"))
    callback.on_train_begin(args, None, None)
    for _ in range(4):
        callback.on_step_end(args, None, None)
    assert calls == [1, 2]
    callback.on_train_end(args, None, None)
    assert threads["n"] == 2


def test_callback_stays_out_of_the_way(clean_env, monkeypatch):
    samples = iter([(0.0, 0.0, 0.0), (20.0, 0.0, 10.0)])  # others at 2 cores
    calls = []
    callback = ThreadPolicyCallback(sample=lambda: next(samples), set_threads=calls.append, get_threads=lambda: 2)
    callback.on_train_begin(SimpleNamespace(device=SimpleNamespace(type="cuda")), None, None)
    callback.on_step_end(None, None, None)
    assert calls == []  # GPU run
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    callback = ThreadPolicyCallback(sample=lambda: (0.0, 0.0, 0.0), set_threads=calls.append, get_threads=lambda: 2)
    assert not callback.enabled  # the user fixed the thread count
