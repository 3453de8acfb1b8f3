"""Run independent calls side by side in worker processes, one intra-op thread each.

The chapters train many small networks. Their matrices are too small for two
intra-op threads to help (the threads mostly wait on Python between small
operations), but two such trainings in two processes run truly side by side.
:func:`run` takes a list of calls, each a :func:`functools.partial` of a
function defined at module level with arguments that pickle, and returns
their results in order::

    from functools import partial
    from bnbook import parallel

    a, b = parallel.run([partial(train, model_a, steps=100), partial(train, model_b, steps=100)])

Every call runs with one intra-op thread, in a worker or, where workers are
not used, in this process. So the numbers are the same whether it ran in
workers or not, on any number of cores, and equal to a one-thread run.
Workers are used when the calls are on the CPU, there are at least two of
them and at least two cores, and ``BNBOOK_WORKERS`` is not ``0``; it may also
set their number. The workers start on the first use (a fork server imports
torch once for all of them) and serve every later call of this Python
process, so a chapter pays their start once.

A call that raises in a worker raises the same exception here, with the
worker's traceback attached. A worker that dies makes :func:`run` raise a
RuntimeError naming it; the next call starts fresh workers.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

__all__ = ["run", "workers", "one_thread", "shutdown"]

#: Modules the fork server imports once for every worker it forks.
PRELOAD = ("numpy", "torch", "bnbook.batched", "bnbook.training")

_lock = threading.Lock()
_in_worker = False  # set in the workers: a call that itself calls run() runs its calls in process
_pool: ProcessPoolExecutor | None = None
_pool_size = 0


def workers() -> int:
    """How many worker processes :func:`run` may use: ``BNBOOK_WORKERS`` if set, else the usable cores.

    The usable cores are those this process may run on, capped by a container's CPU quota.

    Raises
    ------
    ValueError
        If ``BNBOOK_WORKERS`` is set to something other than a non-negative integer.
    """
    raw = os.environ.get("BNBOOK_WORKERS", "").strip()
    if raw:
        if not raw.isdigit():
            raise ValueError(f"BNBOOK_WORKERS must be a non-negative integer, got {raw!r}")
        return int(raw)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return min(cores, _cgroup_cpus() or cores)


def _cgroup_cpus() -> int | None:
    """The CPUs a container's cgroup quota allows (``cpu.max``, as on Binder), or None without a quota."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else max(1, int(int(quota) // int(period)))
    except (OSError, ValueError):
        return None


@contextmanager
def one_thread():
    """Run a block with one intra-op thread; the previous count is restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_worker() -> None:
    # An interrupt (Ctrl-C, a notebook's stop button) reaches the whole process group: the parent
    # handles it by stopping the workers, which must not print tracebacks of their own.
    global _in_worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _in_worker = True


def _call(task: partial) -> Any:
    return task()


def _check(tasks: Sequence[Any]) -> None:
    for i, t in enumerate(tasks):
        if not isinstance(t, partial) and not callable(t):
            raise TypeError(f"call {i} is not callable: {t!r}")
        fn = t.func if isinstance(t, partial) else t
        name = getattr(fn, "__qualname__", "")
        module = getattr(fn, "__module__", None)
        in_notebook = module == "__main__" and not hasattr(sys.modules.get("__main__"), "__file__")
        if "<locals>" in name or "<lambda>" in name or not module or in_notebook:
            raise ValueError(
                f"call {i} ({name or fn!r}) must be a function defined at module level "
                "(or a partial of one), so that a worker process can import it"
            )


def _on_cpu(value: Any, depth: int = 0) -> bool:
    """False when ``value`` holds (within a few levels of containers) a tensor or module off the CPU."""
    if isinstance(value, torch.Tensor):
        return value.device.type == "cpu"
    if isinstance(value, torch.nn.Module):
        return all(p.device.type == "cpu" for p in value.parameters()) and all(
            b.device.type == "cpu" for b in value.buffers()
        )
    if isinstance(value, torch.device):
        return value.type == "cpu"
    if depth < 3:
        if isinstance(value, dict):
            return all(_on_cpu(v, depth + 1) for v in value.values())
        if isinstance(value, list | tuple):
            return all(_on_cpu(v, depth + 1) for v in value)
        fields = getattr(value, "_fields", None)  # named tuples are tuples; other records by attribute
        if fields is None and hasattr(value, "__dict__") and not callable(value):
            return all(_on_cpu(v, depth + 1) for v in vars(value).values())
    return True


def _executor(n: int) -> ProcessPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=True, cancel_futures=True)
            import multiprocessing as mp

            if "forkserver" in mp.get_all_start_methods():
                ctx = mp.get_context("forkserver")
                ctx.set_forkserver_preload(list(PRELOAD))
            else:  # every worker imports for itself
                ctx = mp.get_context("spawn")
            _pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker)
            _pool_size = n
        return _pool


def shutdown(kill: bool = False) -> None:
    """End the workers (a later :func:`run` starts new ones); with ``kill``, stop them mid-call."""
    global _pool, _pool_size
    with _lock:
        if _pool is not None:
            if kill:
                for p in list(getattr(_pool, "_processes", {}).values()):
                    p.terminate()
            _pool.shutdown(wait=True, cancel_futures=True)
        _pool, _pool_size = None, 0


atexit.register(shutdown)


def run(tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run every call of ``tasks`` with one intra-op thread; their results in order.

    Parameters
    ----------
    tasks : sequence of functools.partial (or module-level functions taking no argument)
        Each a function defined at module level, with its arguments; the
        arguments and the result must pickle (tensors, modules, arrays do).

    Calls on the CPU run in worker processes when there are two or more calls
    and :func:`workers` is two or more; otherwise (a tensor or module on
    another device among the arguments, or a single call) they run here, one
    after the other, also with one thread. A call's changes to its arguments
    (a model it trains, say) stay in the worker: return what you need.

    Raises
    ------
    TypeError, ValueError
        If a call is not callable, or not importable by a worker (a lambda, a
        local function); nothing has run then.
    RuntimeError
        If a worker process died; the next call starts new workers.
    """
    tasks = list(tasks)
    _check(tasks)
    n = 1 if _in_worker else min(workers(), len(tasks))
    if n < 2 or not all(_on_cpu(t.args) and _on_cpu(t.keywords) for t in tasks if isinstance(t, partial)):
        with one_thread():
            return [t() for t in tasks]
    for i, t in enumerate(tasks):  # fail here, before any worker starts, on what cannot travel
        try:
            pickle.dumps(t)
        except Exception as e:
            raise ValueError(f"call {i} cannot be sent to a worker process: {e}") from e
    pool = _executor(n)
    futures = []
    try:
        futures += [pool.submit(_call, t) for t in tasks]
        return [f.result() for f in futures]
    except KeyboardInterrupt:
        shutdown(kill=True)  # the workers would otherwise go on with calls nobody waits for
        raise
    except BrokenProcessPool as e:
        shutdown(kill=True)
        raise RuntimeError(
            "a worker process died before its call finished (killed, out of memory, or unable to import "
            "its call); the workers were stopped. A script that calls bnbook.parallel.run must do so "
            "under `if __name__ == \"__main__\":`, and its functions must be importable by name."
        ) from e
    except Exception:
        for f in futures:  # a call raised: the calls not yet started need not run
            f.cancel()
        raise
