"""bnbook.parallel: independent calls in worker processes, one thread each, same numbers as in process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial

import numpy as np
import pytest
import torch

from bnbook import parallel
from bnbook.batched import BatchedMLP, train_batched


def where_and_threads(tag: int) -> tuple[int, int, int]:
    return tag, os.getpid(), torch.get_num_threads()


def slow_where_and_threads(tag: int) -> tuple[int, int, int]:
    time.sleep(0.5)  # long enough that one worker cannot take every call while the other starts
    return where_and_threads(tag)


def train_small(seed: int, steps: int) -> np.ndarray:
    torch.manual_seed(0)
    x, y = torch.randn(200, 8), torch.randint(0, 3, (200,))
    model = BatchedMLP([8, 16, 16, 3], seeds=[seed, seed + 1], batch_norm=True)
    return train_batched(model, x, y, 0.5, steps, 16).loss


def fails(message: str) -> None:
    raise KeyError(message)


def dies() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def takes(x: torch.Tensor) -> int:
    return os.getpid()


@pytest.fixture
def two_workers(monkeypatch):
    monkeypatch.setenv("BNBOOK_WORKERS", "2")
    yield
    parallel.shutdown()


def test_results_in_order_one_thread_each_in_workers(two_workers):
    before = torch.get_num_threads()
    out = parallel.run([partial(slow_where_and_threads, k) for k in range(5)])
    assert [tag for tag, _, _ in out] == list(range(5))
    assert all(threads == 1 for _, _, threads in out)
    assert all(pid != os.getpid() for _, pid, _ in out)
    assert len({pid for _, pid, _ in out}) == 2  # both workers took calls
    assert torch.get_num_threads() == before


def test_in_process_also_one_thread(monkeypatch):
    monkeypatch.setenv("BNBOOK_WORKERS", "0")
    torch.set_num_threads(2)
    try:
        out = parallel.run([partial(where_and_threads, k) for k in range(3)])
        assert [(t, p, n) for t, p, n in out] == [(k, os.getpid(), 1) for k in range(3)]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2") or 2))


def test_same_numbers_in_workers_and_in_process(two_workers, monkeypatch):
    calls = [partial(train_small, s, 40) for s in (1, 5, 9)]
    there = parallel.run(calls)
    monkeypatch.setenv("BNBOOK_WORKERS", "0")
    here = parallel.run(calls)
    for a, b in zip(there, here, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(there[0], there[1])


def test_single_call_and_off_cpu_arguments_run_here(two_workers):
    assert parallel.run([partial(where_and_threads, 0)])[0][1] == os.getpid()
    meta = torch.empty(3, device="meta")
    assert parallel.run([partial(takes, meta), partial(takes, meta)]) == [os.getpid()] * 2
    cpu = torch.empty(3)
    assert all(p != os.getpid() for p in parallel.run([partial(takes, cpu), partial(takes, cpu)]))


def test_a_call_that_raises_raises_here(two_workers):
    with pytest.raises(KeyError, match="bad input 7"):
        parallel.run([partial(where_and_threads, 0), partial(fails, "bad input 7")])
    assert parallel.run([partial(where_and_threads, 1), partial(where_and_threads, 2)])[1][0] == 2


def test_a_worker_that_dies_is_reported_and_replaced(two_workers):
    with pytest.raises(RuntimeError, match="worker process died"):
        parallel.run([dies, partial(where_and_threads, 0)])
    out = parallel.run([partial(where_and_threads, 3), partial(where_and_threads, 4)])
    assert [t for t, _, _ in out] == [3, 4]


def test_what_a_worker_cannot_import_is_refused_before_anything_runs(two_workers):
    def local(x):
        return x

    with pytest.raises(ValueError, match="module level"):
        parallel.run([partial(local, 1), partial(where_and_threads, 0)])
    with pytest.raises(ValueError, match="module level"):
        parallel.run([lambda: 1, partial(where_and_threads, 0)])
    with pytest.raises(TypeError, match="not callable"):
        parallel.run([3, partial(where_and_threads, 0)])
    with pytest.raises(ValueError, match="cannot be sent"):
        parallel.run([partial(takes, threading.Lock()), partial(where_and_threads, 0)])


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_bad_worker_count_is_named(monkeypatch, value):
    monkeypatch.setenv("BNBOOK_WORKERS", value)
    with pytest.raises(ValueError, match="BNBOOK_WORKERS"):
        parallel.run([partial(where_and_threads, 0), partial(where_and_threads, 1)])


def test_chapter_sweeps_same_in_workers_and_in_process(two_workers, monkeypatch):
    from bnbook.demos import comparison as cmp

    data = cmp.digits_splits(0, 270, torch.device("cpu"))
    jobs = [
        dict(names=["xavier", "lsuv", "bn"], settings=[dict(lr=0.1), dict(lr=1.0)], seeds=[1, 2], depth=d,
             width=16, batch_size=16, steps=60, stages=(20,), eval_every=0)
        for d in (2, 3)
    ]
    reg = dict(lrs=[0.3, 3.0], steps=40, depth=2, width=16, batch_size=16, ghost_sizes=(4,), plain=("lsuv",))
    there = cmp.run_many(data, jobs), cmp.overfit(data, 100, [1, 2], **reg)
    monkeypatch.setenv("BNBOOK_WORKERS", "0")
    here = cmp.run_many(data, jobs), cmp.overfit(data, 100, [1, 2], **reg)
    for a, b in zip(there[0], here[0], strict=True):
        assert list(a) == list(b) == ["xavier", "lsuv", "bn"]
        for k in a:
            for field in ("loss", "test_acc", "val_at", "test_at", "diverged"):
                assert np.array_equal(getattr(a[k], field), getattr(b[k], field), equal_nan=True), (k, field)
    assert list(there[1]) == list(here[1]) == ["lsuv", "ghost4", "bn", "full"]
    for k in there[1]:
        for key, v in there[1][k].items():
            assert v.shape == (2, 2) and np.array_equal(v, here[1][k][key]), (k, key)


def test_a_call_that_runs_calls_itself_runs_them_in_its_worker(two_workers, tmp_path):
    # nested: the inner calls run in the worker's own process, and the script still exits
    script = tmp_path / "nested.py"
    script.write_text(
        "from functools import partial\n"
        "from bnbook import parallel\n"
        "from test_parallel import inner_pids\n"
        "if __name__ == '__main__':\n"
        "    out = parallel.run([partial(inner_pids, 2), partial(inner_pids, 3)])\n"
        "    assert all(len(set(p)) == 1 for p in out), out\n"
        "    print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def inner_pids(n: int) -> list[int]:
    return [pid for _, pid, _ in parallel.run([partial(where_and_threads, k) for k in range(n)])]


QUOTAS = [("100000 100000", 1), ("250000 100000", 2), ("max 100000", None)]


@pytest.mark.parametrize(("text", "expected"), QUOTAS)
def test_a_container_quota_caps_the_workers(monkeypatch, text, expected):
    import io

    monkeypatch.delenv("BNBOOK_WORKERS", raising=False)
    monkeypatch.setattr(parallel, "open", lambda *a, **k: io.StringIO(text), raising=False)
    assert parallel._cgroup_cpus() == expected
    assert parallel.workers() == min(len(os.sched_getaffinity(0)), expected or 10**6)
