"""A fused CPU path for batch norm: bnbook's own C++ kernels, compiled on first use.

``bnbook.nn``'s layers express batch norm as a handful of tensor operations,
each a full pass over memory with a fresh temporary. The kernels here fuse
them: a training forward pass reads the input once for the statistics
(shifted for accuracy; float32 input is summed in float32 within blocks of
16 steps, and the blocks' sums are added in double) and once more to write the
output; the backward pass reads ``dy`` and ``x`` once for the two sums (in
double) and once more to write ``dx``. That is the least traffic a streaming
implementation can have. The plain training call on ``(N, C)`` input, where a
small batch makes per-call overhead count, is one autograd node written in C++.
See ``chapters/16_making_it_fast``.

The extension also carries ``bnbook.nn``'s own short path for that call, its
ATen operations called from C++ (``eager_rows``): the same numbers as the
Python Function, without its per-call Python. ``bnbook.nn``'s layers take it
once the extension is loaded, or on their first training call when it is
built already (:func:`load_built`, which never builds).

Large outputs come from a small cache of freed blocks, aligned for huge
pages: training outputs (``y``, ``dx``) from 4 MiB, eval outputs from 32 MiB.
The C library maps a block of 32 MiB or more fresh from the system every
time, and gives smaller ones back between training steps; a fresh block's
first touch faults once per 4 KiB page, which at 64 MiB takes longer than the
kernel. The cache holds at most 512 MiB of blocks that no tensor uses;
:func:`cache_info` shows what it holds, :func:`empty_cache` frees it and
:func:`set_cache_limit` bounds it (0 turns it off); inside :func:`without_cache`
new outputs come from torch's allocator, as a control for timing. When a freed
block does not fit under the limit, blocks of other sizes make room for it (so
sizes that together need more than the limit evict each other: raise it).

The kernels build with ``torch.utils.cpp_extension`` where a C++ compiler is
present, into torch's extension cache, so the second run only loads them
(well under a second). Where they cannot be built, :func:`available` is False,
:func:`status` says why, and the layers here fall back to ``bnbook.nn``'s
eager path: the same results up to rounding, slower.

Layers: :class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d`,
drop-ins for ``torch.nn``'s (and subclasses of ``bnbook.nn``'s) for float32
and float64 CPU tensors, contiguous or channels-last; any other input (half
precision, a GPU, a functorch transform, forward-mode AD, a compiler) takes the
eager path. Under ``create_graph=True`` the backward pass is the closed form
written with differentiable operations, so second derivatives are exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad

from bnbook.nn import _batchnorm as _eager

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "FusedBatchNormFunction",
    "available",
    "cache_info",
    "empty_cache",
    "load",
    "load_built",
    "set_cache_limit",
    "status",
    "without_cache",
]

_SOURCE = Path(__file__).with_name("_bn_kernels.cpp")
#: Set to 1 to skip building the kernels (the layers then use the eager path).
DISABLE_ENV = "BNBOOK_NO_EXTENSION"
_state: dict[str, Any] = {"module": None, "error": None, "tried": False}


#: Seconds to wait for another process that is building the kernels, before falling back.
BUILD_WAIT_ENV = "BNBOOK_BUILD_WAIT"
_BUILD_WAIT_S = 600.0


_CFLAGS = ["-O3", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]


def _module_name() -> str:
    """The extension's name: a hash of its source, the build flags, torch's version and Python's ABI.

    A build is therefore only ever loaded by the code it was built from, and
    :func:`load_built` can import a finished build without asking ninja.
    """
    key = hashlib.sha256(_SOURCE.read_bytes())
    key.update(repr((_CFLAGS, _LDFLAGS, torch.__version__, sysconfig.get_config_var("SOABI"))).encode())
    return "bnbook_bn_kernels_" + key.hexdigest()[:12]


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def _stamp(library: Path) -> str:
    """What a finished build leaves beside its library: the library's size and hash."""
    data = library.read_bytes()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"


def _import_finished(name: str, build_dir: Path) -> Any:
    """Import the library of a finished build as it is; None if there is none, or it is not whole.

    Only a library whose stamp (written once its build succeeded) still
    matches is imported: a build killed half-way leaves a cut library, which
    would crash the process on import rather than raise.
    """
    import importlib.util

    library, stamp = build_dir / f"{name}.so", build_dir / f"{name}.so.built"
    try:
        if not (library.is_file() and stamp.is_file() and stamp.read_text() == _stamp(library)):
            return None
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception:  # unreadable, or not a library of this Python: leave it to a build
        return None
    return module if hasattr(module, "eager_rows") else None


def _loaded(module: Any) -> Any:
    _state.update(module=module, tried=True, error=None)
    _eager.use_compiled_rows(module.eager_rows)  # bnbook.nn runs its short path from C++ from now on
    return module


def load(verbose: bool = False) -> Any:
    """Load the kernels (building them the first time); None when that is not possible here.

    A finished build of this very source is imported as it is; the build tool
    runs only when there is none (or it is not whole).
    """
    if _state["tried"]:
        return _state["module"]
    _state["tried"] = True
    if _disabled():
        _state["error"] = f"{DISABLE_ENV} is set"
        return None
    try:
        from torch.utils import cpp_extension

        name = _module_name()
        build_dir = Path(cpp_extension._get_build_directory(name, verbose))
        wait = float(os.environ.get(BUILD_WAIT_ENV, _BUILD_WAIT_S))
        with _build_lock(build_dir, wait):
            module = _import_finished(name, build_dir)
            if module is None:
                (build_dir / f"{name}.so.built").unlink(missing_ok=True)
                module = cpp_extension.load(
                    name=name,
                    sources=[str(_SOURCE)],
                    extra_cflags=list(_CFLAGS),  # copies: the build tool extends the lists it is given
                    extra_ldflags=list(_LDFLAGS),
                    build_directory=str(build_dir),
                    verbose=verbose,
                )
                library = build_dir / f"{name}.so"
                partial = library.with_suffix(".so.built.partial")
                partial.write_text(_stamp(library))
                partial.replace(library.with_suffix(".so.built"))
    except Exception as err:  # no compiler, no ninja, a failed build, a build that never ends: fall back
        _state["error"] = (
            f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        )
        return None
    return _loaded(module)


def load_built() -> Any:
    """The kernels if they are loaded, or built already and free to load now; never builds them.

    ``bnbook.nn`` asks this on its first training call, so that its layers run
    their short path from C++ where the kernels were built (``make dev`` builds
    them), and never wait for a compiler. A finished build is imported as it
    is, without the build tool (which would rebuild a source whose file time
    changed, after a checkout for example): its name says which source, flags
    and torch it was built from. None when there is no finished build, another
    process is building one right now, or ``BNBOOK_NO_EXTENSION`` is set;
    :func:`load` can still build the kernels later.
    """
    if _state["module"] is not None or _state["tried"] or _disabled():
        return _state["module"]
    import fcntl

    from torch.utils import cpp_extension

    name = _module_name()
    try:
        build_dir = Path(cpp_extension._get_build_directory(name, False))
        if not (build_dir / f"{name}.so").is_file():
            return None
        with open(build_dir / "bnbook-build.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # being built right now: not ready
                return None
            try:
                module = _import_finished(name, build_dir)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:  # a cache folder that cannot be made or written: a layer's call must not fail for it
        return None
    return None if module is None else _loaded(module)


@contextlib.contextmanager
def _build_lock(build_dir: Path, wait_s: float) -> Iterator[None]:
    """Hold an exclusive lock on the build folder that the OS releases when its holder dies.

    torch's own build lock is a file that a killed build leaves behind, after
    which every later build waits for it forever. Under this lock no other
    bnbook process can be building here, so such a file is stale and is
    removed. If another live process holds the lock for longer than
    ``wait_s`` seconds, :class:`TimeoutError` is raised (and the caller falls back).
    """
    import fcntl

    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "bnbook-build.lock", "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"another process has been building the kernels in {build_dir} for over "
                        f"{wait_s:.0f} s (set {BUILD_WAIT_ENV} to wait longer)"
                    ) from None
                time.sleep(0.2)
        try:
            (build_dir / "lock").unlink(missing_ok=True)  # left by a build that was killed
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def available() -> bool:
    """True when the fused kernels are built and loaded."""
    return load() is not None


def status() -> str:
    """One line: whether the fused path is in use, and if not, why."""
    if available():
        return "fused C++ kernels loaded"
    return f"fused kernels unavailable ({_state['error']}); using bnbook.nn's eager path"


def cache_info() -> dict[str, int]:
    """What the output cache holds: bytes and blocks held, its limit, and its hits and misses so far.

    All zeros (with the default limit) when the kernels are not loaded.
    """
    ext = load()
    held, blocks, limit, hits, misses = ext.cache_info() if ext is not None else (0, 0, _CACHE_LIMIT, 0, 0)
    return {"bytes": held, "blocks": blocks, "limit": limit, "hits": hits, "misses": misses}


def empty_cache() -> None:
    """Give every block the output cache holds back to the system (tensors in use keep theirs)."""
    ext = load()
    if ext is not None:
        ext.empty_cache()


def set_cache_limit(nbytes: int) -> None:
    """Bound the bytes of freed output blocks the cache may keep; 0 turns it off. Frees what is above."""
    import operator

    try:
        value = operator.index(nbytes)  # ints and NumPy integers; not floats, strings or bools
    except TypeError:
        value = None
    if isinstance(nbytes, bool) or value is None or not 0 <= value < 2**63:
        raise ValueError(f"the cache limit must be a whole number of bytes in [0, 2**63), got {nbytes!r}")
    ext = load()
    if ext is None:
        raise RuntimeError(f"the fused kernels are not loaded: {status()}")
    ext.set_cache_limit(value)


@contextlib.contextmanager
def without_cache() -> Iterator[None]:
    """Within the block, new outputs come from torch's allocator; the blocks the cache holds stay.

    A control for timing (chapter 16 times the fused step with and without the
    cache in the same rounds). Blocks nest, also across threads: the cache is
    bypassed until the last open block ends, normally or by an exception. The
    setting is the process's, not the thread's.
    """
    ext = load()
    if ext is None:
        yield
        return
    with _bypass["lock"]:
        _bypass["depth"] += 1
        ext.set_cache_bypass(True)
    try:
        yield
    finally:
        with _bypass["lock"]:
            _bypass["depth"] -= 1
            ext.set_cache_bypass(_bypass["depth"] > 0)


_bypass: dict[str, Any] = {"depth": 0, "lock": threading.Lock()}


#: The output cache's default limit, in bytes.
_CACHE_LIMIT = 512 * 2**20


def _fusable(x: Tensor) -> bool:
    """Whether the kernels serve this call: a plain float32/float64 CPU tensor, outside any transform.

    Everything else takes ``bnbook.nn``'s eager path, which supports it: other
    dtypes and devices, ``vmap`` and the other functorch transforms, forward-mode
    AD (``jvp``), ``torch.export`` (tensor subclasses such as fake tensors), and
    ``torch.compile``. (Under ``torch.jit.trace`` the layers never get here:
    ``bnbook.nn`` emits one ``aten::batch_norm``, which a trace records.)
    """
    if type(x) is not torch.Tensor and type(x) is not torch.nn.Parameter:
        return False
    if not x.is_cpu or x.dtype not in (torch.float32, torch.float64) or x.numel() == 0:
        return False
    if (
        _forward_ad._current_level >= 0
        or torch._C._are_functorch_transforms_active()
        or torch.compiler.is_compiling()
    ):
        return False
    if x.is_contiguous():
        return True
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return fmt is not None and x.is_contiguous(memory_format=fmt)


class FusedBatchNormFunction(torch.autograd.Function):
    """``(x, weight, bias, mean, var, eps, running_mean, running_var, momentum) -> (y, mean, invstd)``.

    Same arguments and meaning as :class:`bnbook.nn.BatchNormFunction`; running
    buffers are updated in the forward pass. The extra outputs are the float64
    per-channel mean and inverse standard deviation (not differentiable).
    The first backward pass runs on the fused kernel. Under
    ``create_graph=True`` (a gradient penalty, a Hessian) it evaluates the
    closed form with differentiable operations instead, as ``bnbook.nn`` does,
    so second derivatives are exact.
    """

    @staticmethod
    def forward(x, weight, bias, mean, var, eps, running_mean, running_var, momentum):
        ext = load()
        if mean is None:
            # statistics, output and the running buffers' update (when given) in one call
            return tuple(ext.forward_train_update(x, weight, bias, eps, running_mean, running_var, momentum))
        # one pass with per-channel scale and shift; mean64 and invstd64 are fresh float64 tensors,
        # never the caller's buffers (a later in-place update of a saved buffer would break backward)
        return tuple(ext.forward_eval(x, mean, var, weight, bias, eps))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mean, _, eps = inputs[:6]
        _, mean64, invstd64 = output
        ctx.save_for_backward(x, weight, mean64, invstd64)
        ctx.batch_stats, ctx.has_bias, ctx.eps = mean is None, bias is not None, eps
        ctx.mark_non_differentiable(mean64, invstd64)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy, *_unused):
        x, weight, mean64, invstd64 = ctx.saved_tensors
        none = (None,) * 6
        if dy is None:
            return (None, None, None, *none)
        if torch.is_grad_enabled():  # create_graph=True: the differentiable closed form
            var = (invstd64.pow(-2) - ctx.eps).to(_compute_dtype(x))
            dx, dw, db = _eager._backward_differentiable(ctx, dy, x, weight, mean64.to(var.dtype), var)
            dx = dx.to(x.dtype) if ctx.needs_input_grad[0] else None
        else:
            fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() else None
            fmt = torch.channels_last_3d if x.dim() == 5 and not x.is_contiguous() else fmt
            dy = dy.contiguous(memory_format=fmt) if fmt is not None else dy.contiguous()
            dx, dw, db = load().backward_train(dy, x, weight, mean64, invstd64, ctx.batch_stats)
            dx = dx if ctx.needs_input_grad[0] else None
        dw = dw.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = db.to(x.dtype if weight is None else weight.dtype)
        else:
            db = None
        return (dx, dw, db, *none)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class _Fused:
    """Presents :class:`FusedBatchNormFunction` with ``BatchNormFunction.apply``'s signature."""

    @staticmethod
    def apply(x, weight, bias, mean, var, eps, running_mean=None, running_var=None, momentum=0.0):
        args = (x, weight, bias, mean, var, eps, running_mean, running_var, momentum)
        if not (torch.is_grad_enabled() and (x.requires_grad or _any_grad(weight, bias))):
            return FusedBatchNormFunction.forward(*args)[0], None, None  # no graph to record
        return _eager.apply_unbound(FusedBatchNormFunction, *args)[0], None, None


def _any_grad(*tensors: Tensor | None) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)


class _FusedMixin:
    """Computes ``bnbook.nn``'s forward with the fused kernels wherever they apply."""

    def _function_for(self, input: Tensor) -> Any:
        return _Fused if _fusable(input) and available() else super()._function_for(input)


class BatchNorm1d(_FusedMixin, _eager.BatchNorm1d):
    """``bnbook.nn.BatchNorm1d`` on the fused kernels; see :mod:`bnbook.fast`."""


class BatchNorm2d(_FusedMixin, _eager.BatchNorm2d):
    """``bnbook.nn.BatchNorm2d`` on the fused kernels; see :mod:`bnbook.fast`."""


class BatchNorm3d(_FusedMixin, _eager.BatchNorm3d):
    """``bnbook.nn.BatchNorm3d`` on the fused kernels; see :mod:`bnbook.fast`."""


def _train_rows(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
                eps: float, momentum: float) -> Tensor:
    """The plain training call on ``(N, C)`` input as one autograd node written in C++.

    The same kernel calls, so the same numbers, as :class:`FusedBatchNormFunction`
    in this case, without its Python (optional operands, extra outputs, layouts),
    which on a small batch costs more than the kernels. Under ``create_graph=True``
    its backward pass is the differentiable closed form. ``bnbook.nn``'s layers
    call it under the conditions of their own short path (float32 or float64,
    weight, bias and running buffers present, outside every transform) when the
    fused kernels serve the input.
    """
    return _state["module"].train_rows(x, weight, bias, running_mean, running_var, eps, momentum)


_eager.TRAIN_ROWS_PATHS[_Fused] = _train_rows
