"""Start worker processes joined in a ``torch.distributed`` process group, on this machine.

:func:`launch` runs ``fn(rank, world_size, *args)`` once in ``world_size``
fresh processes joined in a process group (gloo on 127.0.0.1, so it works on
any CPU), and returns what each returned, in rank order. :class:`Pool` keeps
such a group alive, so that one start (every process imports torch, which
takes seconds) serves many calls::

    with Pool(4) as pool:
        first = pool.run("mypackage.tasks:measure", 10)   # by module-qualified name
        second = pool.run(measure, 20)                      # or the function itself

The workers are fresh Python processes: ``fn`` must be importable by name,
either as a function defined at module level of an importable module, or as a
string ``"module:function"``. The chapter on batch norm across processes
(``chapters/14_across_processes``) keeps its worker functions in its demo module.

A worker that raises or dies makes the call stop the others at once and raise
an error naming the rank and the cause; a call that makes no progress for
``timeout`` seconds is stopped too. Nothing is left hanging: after a failure
the pool is closed.
"""

from __future__ import annotations

import datetime
import importlib
import os
import pickle
import queue as queue_module
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["Pool", "free_port", "launch", "resolve"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """The function named by ``"package.module:function"``, or ``fn`` itself when it is callable.

    Raises
    ------
    ValueError
        If ``fn`` is neither callable nor a string of that form, or names nothing callable.
    """
    if callable(fn):
        return fn
    if not isinstance(fn, str) or fn.count(":") != 1:
        raise ValueError(f"expected a function or a 'module:function' name, got {fn!r}")
    module_name, _, attr = fn.partition(":")
    target = getattr(importlib.import_module(module_name), attr, None)
    if not callable(target):
        raise ValueError(f"{fn!r} names nothing callable")
    return target


def _check_fn(fn: Callable[..., Any] | str) -> None:
    """Refuse what the workers could not import by name (a lambda, a local function)."""
    if isinstance(fn, str):
        if fn.count(":") != 1 or not all(fn.partition(":")[::2]):
            raise ValueError(f"a function name must read 'module:function', got {fn!r}")
        return
    name = getattr(fn, "__qualname__", "<lambda>")
    if not callable(fn) or "<lambda>" in name or "<locals>" in name:
        raise ValueError("fn must be a function defined at module level, so the workers can import it")


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout: float,
    threads: int,
    inbox: Any,
    results: Any,
) -> None:
    """Join the group, then run every job of ``inbox`` until it sends None."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    try:
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout)
        )
    except BaseException:
        results.put((None, rank, False, traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)
    parent = os.getppid()
    try:
        while True:
            try:
                job = inbox.get(timeout=1.0)
            except queue_module.Empty:
                if os.getppid() != parent:  # the parent is gone: nobody will send more work
                    break
                continue
            if job is None:
                break
            job_id, fn, args = job
            try:
                value = resolve(fn)(rank, world_size, *args)
                # Pickled here with plain pickle, so tensors travel by value and outlive this process.
                results.put((job_id, rank, True, pickle.dumps(value)))
            except BaseException:  # report every failure to the parent, which stops the others
                results.put((job_id, rank, False, traceback.format_exc()))
                break
    finally:
        dist.destroy_process_group()
        # Hand over what is queued, then leave without the interpreter's slow teardown.
        results.close()
        results.join_thread()
        os._exit(0)


def _failure_report(rank: int, trace: str, results: Any, procs: list, grace: float = 2.0) -> str:
    """The first failure, any other that arrives within ``grace`` seconds, and workers that died silently.

    A worker that dies takes its connections with it, so its partners fail
    too; listing every rank shows which one started it.
    """
    world_size = len(procs)
    failures = [(rank, trace)]
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            _, other, ok, value = results.get(timeout=0.1)
        except queue_module.Empty:
            continue
        if not ok:
            failures.append((other, value))
    reported = {r for r, _ in failures}
    for r, p in enumerate(procs):
        if r not in reported and p.exitcode not in (None, 0):
            failures.insert(0, (r, f"died with exit code {p.exitcode} without reporting"))
    ranks = ", ".join(str(r) for r, _ in failures)
    parts = [f"worker rank {ranks} of {world_size} failed; the other workers were stopped."]
    parts += [f"--- rank {r} ---\n{t}" for r, t in failures]
    return "\n".join(parts)


class Pool:
    """``world_size`` worker processes joined in one process group, kept alive across calls.

    Parameters
    ----------
    world_size : int, >= 1
    backend : str
        ``"gloo"`` (CPU, any machine) or ``"nccl"`` (one GPU per process).
    timeout : float
        Seconds one call may take (the first one includes the workers joining
        the group); past it every worker is stopped. Also the process group's own timeout.
    threads : int
        Torch threads per worker (1 keeps several workers off each other's cores).
    preload : tuple of str
        Modules the fork server imports once for all workers (for example the
        module that holds the tasks). It takes effect when this Python process
        starts its first fork server; later pools reuse that server.

    The processes start at once, in the background; :meth:`run` waits for them and sends them
    work, and :meth:`close` (or leaving a ``with`` block) ends them. A failed call closes the pool.
    """

    def __init__(
        self,
        world_size: int,
        backend: str = "gloo",
        timeout: float = 60.0,
        threads: int = 1,
        preload: tuple[str, ...] = ("torch", "torch.distributed"),
    ) -> None:
        import torch.multiprocessing as mp

        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.world_size, self.timeout = world_size, float(timeout)
        self._jobs = 0
        # A fork server imports torch (and ``preload``) once; each worker is a fork of it, so the
        # workers start in a fraction of a second instead of importing torch each. Unlike a fork of
        # this process, the server has no threads and no state of its own: forking it is safe.
        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(list(preload))
        else:  # Windows: every worker imports for itself
            ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(world_size)]
        port = free_port()
        self._procs = [
            ctx.Process(
                target=_worker,
                args=(rank, world_size, port, backend, timeout, threads, self._inboxes[rank], self._results),
                daemon=True,
            )
            for rank in range(world_size)
        ]
        # Started from a thread, so that this process can go on (importing, computing) while the
        # fork server imports torch; the first run() waits for the start.
        self._starter = threading.Thread(target=self._start, daemon=True)
        self._starter.start()
        self.closed = False

    def _start(self) -> None:
        for p in self._procs:
            p.start()

    def run(self, fn: Callable[..., Any] | str, *args: Any) -> list[Any]:
        """Run ``fn(rank, world_size, *args)`` on every worker; their return values in rank order.

        ``fn`` is a module-level function or a ``"module:function"`` name;
        ``args`` must pickle, and so must what ``fn`` returns.

        Raises
        ------
        RuntimeError
            If a worker raises (the message holds its traceback) or dies, or if
            the call runs past ``timeout``; every worker is stopped first.
        """
        if self.closed:
            raise RuntimeError("this pool is closed; start a new one")
        _check_fn(fn)
        self._starter.join()
        self._jobs += 1
        job_id = self._jobs
        for inbox in self._inboxes:
            inbox.put((job_id, fn, args))
        done: dict[int, Any] = {}
        deadline = time.monotonic() + self.timeout
        ok_so_far = False
        try:
            while len(done) < self.world_size:
                try:
                    got, rank, ok, value = self._results.get(timeout=0.2)
                except queue_module.Empty:
                    dead = [r for r, p in enumerate(self._procs) if p.exitcode not in (None, 0)]
                    if dead:
                        code = self._procs[dead[0]].exitcode
                        raise RuntimeError(
                            f"worker rank {dead[0]} of {self.world_size} died (exit code {code}) "
                            "without reporting; the other workers were stopped"
                        ) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the process group made no progress within {self.timeout:g} s "
                            f"(ranks done: {sorted(done)}); every worker was stopped"
                        ) from None
                    continue
                if not ok:
                    raise RuntimeError(_failure_report(rank, value, self._results, self._procs))
                if got == job_id:
                    done[rank] = pickle.loads(value)
            ok_so_far = True
        finally:
            if not ok_so_far:
                self._stop(force=True)
        return [done[r] for r in range(self.world_size)]

    def _stop(self, force: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self._starter.join()
        if not force:
            for inbox in self._inboxes:
                inbox.put(None)
        for p in self._procs:
            if force and p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        for q in (*self._inboxes, self._results):
            q.close()

    def close(self) -> None:
        """End the workers (they leave the process group cleanly); a closed pool runs nothing."""
        self._stop(force=False)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a pool that is dropped still ends its processes
        try:
            self._stop(force=True)
        except Exception:
            pass


def launch(
    fn: Callable[..., Any] | str,
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout: float = 60.0,
    threads: int = 1,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` once in ``world_size`` processes joined in a process group.

    A :class:`Pool` for one call: the processes start, run ``fn`` and end.

    Parameters
    ----------
    fn : callable or str
        Importable by name (defined at module level in an importable module,
        or a ``"module:function"`` string), since the workers are fresh Python
        processes. Its return value must pickle (tensors do).
    world_size : int, >= 1
    *args
        Passed on to every worker; they must pickle.
    backend : str
        ``"gloo"`` (CPU, any machine) or ``"nccl"`` (one GPU per process).
    timeout : float
        Seconds the whole group may take; past it every worker is stopped.
    threads : int
        Torch threads per worker (1 keeps several workers off each other's cores).

    Returns
    -------
    list
        ``fn``'s return values, in rank order.

    Raises
    ------
    RuntimeError
        If a worker raises (the message holds its traceback) or dies, or if
        the group runs past ``timeout``; the other workers are stopped first.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    _check_fn(fn)
    with Pool(world_size, backend=backend, timeout=timeout, threads=threads) as pool:
        return pool.run(fn, *args)
