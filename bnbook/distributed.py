"""Start worker processes for the chapter on batch norm across processes, on this machine.

:func:`launch` runs ``fn(rank, world_size, *args)`` in ``world_size`` fresh
processes joined in a ``torch.distributed`` process group (gloo on
127.0.0.1, so it works on any CPU), and returns what each returned, in rank
order. A notebook calls it directly: the workers import ``fn`` from the
package, so worker code lives in the package, not in the notebook.

A worker that raises or dies makes :func:`launch` stop the others at once and
raise an error naming the rank and the cause; a group that makes no progress
for ``timeout`` seconds is stopped too. Nothing is left hanging.
"""

from __future__ import annotations

import datetime
import os
import pickle
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["free_port", "launch"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout: float,
    threads: int,
    results: Any,
    args: tuple,
) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    try:
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout)
        )
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # Pickled here with plain pickle, so tensors travel by value and outlive this process.
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # report every failure to the parent, which stops the others
        results.put((rank, False, traceback.format_exc()))


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
            other, ok, value = results.get(timeout=0.1)
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


def launch(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout: float = 60.0,
    threads: int = 1,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined in a process group.

    Parameters
    ----------
    fn : callable
        Importable by name (defined at module level in an importable module),
        since the workers are fresh Python processes. Its return value must
        pickle (tensors do).
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
    import torch.multiprocessing as mp

    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not callable(fn) or getattr(fn, "__name__", "<lambda>") == "<lambda>":
        raise ValueError("fn must be a function defined at module level, so the workers can import it")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(fn, rank, world_size, port, backend, timeout, threads, results, args),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    done: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(done) < world_size:
            try:
                rank, ok, value = results.get(timeout=0.2)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if r not in done and p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"worker rank {dead[0]} of {world_size} died (exit code {procs[dead[0]].exitcode}) "
                        "without reporting; the other workers were stopped"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the process group made no progress within {timeout:g} s "
                        f"(ranks done: {sorted(done)}); every worker was stopped"
                    ) from None
                continue
            if not ok:
                raise RuntimeError(_failure_report(rank, value, results, procs))
            done[rank] = pickle.loads(value)
    finally:
        for p in procs:
            if p.is_alive() and len(done) < world_size:
                p.terminate()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
    return [done[r] for r in range(world_size)]
