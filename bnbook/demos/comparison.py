"""Chapter 8, training with and without batch normalization: the sweeps, their statistics and figures.

Every experiment here trains many small networks at once with
:class:`bnbook.batched.BatchedMLP`: one member per (setting, seed) pair.

* :data:`NETS` names the four networks every comparison shows: a plain network
  with PyTorch's default initialization, with Xavier's, with the data-dependent
  initialization :func:`bnbook.models.lsuv_init`, and a network with batch norm;
* :func:`digits_splits` cuts the digits into training, validation and test tensors;
* :func:`run` trains one batched model over a list of settings times seeds,
  optionally in stages with a validation and test evaluation after each, and
  :func:`run_nets` does it for several of the four networks at once; with a
  :class:`FixedSet` they also measure some runs on a fixed set of images
  after every step (:func:`smoothness_of` reads it), and
  :func:`continue_runs` trains some runs of a finished sweep for longer;
* :func:`paired` and :func:`verdict` turn per-seed numbers into a paired
  difference, its standard error, a 95% interval and a verdict;
* :func:`steps_to_reach`, :func:`largest_trainable`, :func:`best_by_validation`
  and :func:`roughness` turn curves into the numbers the chapter quotes;
* :func:`forward_stats`, :func:`train_members` and :func:`evaluate_members`
  train batch-normalized members whose statistics come from ghost batches or
  from the whole training set, and train members with Adam;
  :func:`run_optimizer` and :func:`overfit` use them for the chapter's Adam and
  regularization experiments;
* the ``plot_*`` functions draw the chapter's figures; :func:`make_explorer_draw`
  draws one frame of the learning-rate x depth explorer from precomputed curves;
* :func:`time_batched_vs_loop` times the batched trainer against a loop of
  separate ``torch.nn.Sequential`` models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bnbook import parallel
from bnbook.batched import (
    ACTIVATIONS,
    BatchedHistory,
    BatchedMLP,
    evaluate_batched,
    member_forward,
    train_batched,
)
from bnbook.data import load_digits
from bnbook.models import lsuv_init
from bnbook.plots import band, series
from bnbook.report import sig
from bnbook.stats import Paired, paired, verdict

__all__ = [
    "LOOKS",
    "LSUV_BATCH",
    "NETS",
    "Data",
    "Paired",
    "FixedSet",
    "Sweep",
    "best_by_validation",
    "continue_runs",
    "digits_splits",
    "evaluate_members",
    "forward_stats",
    "largest_trainable",
    "look",
    "make_explorer_describe",
    "make_explorer_draw",
    "overfit",
    "paired",
    "plot_curves",
    "plot_sweep",
    "roughness",
    "run",
    "run_nets",
    "run_optimizer",
    "smooth",
    "smoothness",
    "smoothness_of",
    "steps_to_reach",
    "time_batched_vs_loop",
    "train_members",
    "verdict",
]

#: The four networks: whether they normalize, and how their weights start.
#: ``lsuv`` starts from PyTorch's default and then applies :func:`bnbook.models.lsuv_init`.
NETS: dict[str, dict] = {
    "no_bn": dict(batch_norm=False, init="default", lsuv=False),
    "xavier": dict(batch_norm=False, init="xavier", lsuv=False),
    "lsuv": dict(batch_norm=False, init="default", lsuv=True),
    "bn": dict(batch_norm=True, init="default", lsuv=False),
    "bn_scaled": dict(batch_norm=True, init="default", lsuv=True),
    "lsuv_out": dict(batch_norm=False, init="default", lsuv="output"),
}

#: How each network of :data:`NETS` is drawn and printed: the book-wide look of
#: :func:`bnbook.plots.series`, with this chapter's labels for the two variants it adds.
LOOKS: dict[str, dict] = {
    "no_bn": series("no_bn"),
    "xavier": series("xavier", label="no BN, Xavier init"),
    "lsuv": series("lsuv"),
    "bn": series("bn"),
    "bn_scaled": series(
        "bn", label="BN, data-dependent weight scale", color="#56B4E9", marker="P", linestyle=":"
    ),
    "lsuv_out": series(
        "lsuv",
        label="no BN, data-dependent init with output layer",
        color="#009E73",
        marker="X",
        linestyle=":",
    ),
}


def look(name: str, **overrides) -> dict:
    """Plot keywords of network ``name`` (see :data:`LOOKS`)."""
    return {**LOOKS[name], **overrides}


#: How many training images the data-dependent initialization sees (the first ones of the split).
LSUV_BATCH = 256


class Data(NamedTuple):
    """Digits as tensors on one device: training, validation (for choices) and test (for reports)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits_splits(seed: int, n_val: int, device: torch.device) -> Data:
    """The digits of :func:`bnbook.data.load_digits`, with the last ``n_val`` training images held out."""
    split = load_digits(seed=seed)
    t = [torch.from_numpy(a).to(device) for a in split]
    return Data(t[0][:-n_val], t[1][:-n_val], t[0][-n_val:], t[1][-n_val:], t[2], t[3])


class Sweep(NamedTuple):
    """Results of :func:`run`; ``S`` settings times ``R`` seeds.

    Attributes
    ----------
    settings : list of dict
        Per setting: ``lr``, ``init``, ``init_scale``, ``lsuv``.
    loss : ndarray (S, R, steps)
        Training loss per step (NaN after divergence).
    eval_steps : ndarray (n_evals,)
    test_acc : ndarray (S, R, n_evals)
        Test accuracy along training (chance after divergence).
    val_acc : ndarray (S, R)
        Validation accuracy at the end.
    diverged : ndarray of bool (S, R)
    stages : tuple of int
        Steps after which validation and test accuracy were recorded.
    val_at, test_at : ndarray (S, R, n_stages)
        Validation and test accuracy after each stage.
    model : BatchedMLP
        The trained model, shared by every :meth:`take` of the sweep.
    offset : int
        Index in ``model`` of this sweep's first setting; see :meth:`member_index`.
    fixed_loss : ndarray (S, R, steps - start + 1) or None
        With a :class:`FixedSet`: the loss on the fixed set after steps
        ``start`` to ``steps`` (NaN for settings not measured).
    """

    settings: list
    loss: np.ndarray
    eval_steps: np.ndarray
    test_acc: np.ndarray
    val_acc: np.ndarray
    diverged: np.ndarray
    stages: tuple
    val_at: np.ndarray
    test_at: np.ndarray
    model: BatchedMLP
    offset: int = 0
    fixed_loss: np.ndarray | None = None

    def member_index(self, setting: int, seed: int) -> int:
        """Index in :attr:`model` of the member with ``settings[setting]`` and seed number ``seed``."""
        return (self.offset + setting) * self.loss.shape[1] + seed

    def take(self, rows: Sequence[int] | slice) -> Sweep:
        """The same results for consecutive settings ``rows`` (the model stays whole)."""
        idx = np.arange(len(self.settings))[rows]
        if idx.size and np.any(np.diff(idx) != 1):
            raise ValueError("take needs consecutive settings")
        return self._replace(
            offset=self.offset + int(idx[0]) if idx.size else self.offset,
            settings=[self.settings[i] for i in idx],
            loss=self.loss[idx],
            test_acc=self.test_acc[idx],
            val_acc=self.val_acc[idx],
            diverged=self.diverged[idx],
            val_at=self.val_at[idx],
            test_at=self.test_at[idx],
            fixed_loss=None if self.fixed_loss is None else self.fixed_loss[idx],
        )


def _apply_lsuv(model: BatchedMLP, chosen: Sequence[bool | str], x: torch.Tensor) -> None:
    """:func:`bnbook.models.lsuv_init` on the ``chosen`` members only; the others keep their weights.

    ``chosen[k]`` is False (leave member ``k`` alone), True (rescale its hidden
    layers) or ``"output"`` (rescale the output layer too, as Mishkin and
    Matas' LSUV does: ``lsuv_init(..., include_output=True)``).
    """
    for kind, include_output in ((True, False), ("output", True)):
        pick = [c is kind if kind is True else c == kind for c in chosen]
        if not any(pick):
            continue
        keep = torch.tensor([not c for c in pick], device=x.device)
        saved = [p.detach().clone() for p in model.parameters()]
        lsuv_init(model, x, include_output=include_output)
        with torch.no_grad():
            for p, old in zip(model.parameters(), saved, strict=True):
                p[keep] = old[keep]


class FixedSet(NamedTuple):
    """Which runs of a sweep to measure on a fixed set of training images, and from when (chapter 8).

    The runs of networks ``names`` at learning rates ``lrs`` are measured after
    every step from step ``start`` on, on the first ``n_eval`` training images
    (all of them when None); batch norm normalizes them with their own
    statistics, so the measurement carries no batch noise.
    """

    names: Sequence[str]
    lrs: Sequence[float]
    start: int
    n_eval: int | None = None


def _moments(z: torch.Tensor, dim: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of ``z`` over ``dim`` and ``1 / sqrt(biased variance + eps)``, both kept as dims.

    Two passes, the mean and then the mean of the squared deviations, as
    :class:`BatchedMLP` computes them; on this CPU ``Tensor.var`` over a short
    dimension is tens of times slower than these three operations.
    """
    mean = z.mean(dim, keepdim=True)
    centred = z - mean
    return mean, torch.rsqrt((centred * centred).mean(dim, keepdim=True) + eps)


@torch.no_grad()
def _fixed_set_loss(
    model: BatchedMLP, x: torch.Tensor, y: torch.Tensor, members: Sequence[int]
) -> np.ndarray:
    """Cross-entropy of the ``members`` on ``(x, y)``, batch norm with the statistics of ``x`` itself.

    The operations of ``forward_stats(model, x3, [(k, N)])`` (of ``model(x3)``
    without batch norm) on the members' slices of the parameters, so each
    member's number does not depend on which others are measured with it.
    Running statistics are not touched. Returns shape (len(members),).
    """
    idx = torch.tensor(list(members), device=x.device)
    n = x.shape[0]

    def normalize(i: int, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # the statistics of x
        zg = h.reshape(len(idx), 1, n, -1)
        mean, rstd = _moments(zg, 2, model.eps)
        h = ((zg - mean) * rstd).reshape(len(idx), n, -1)
        gamma, beta = model.gammas[i].index_select(0, idx), model.betas[i].index_select(0, idx)
        return h * gamma.unsqueeze(1) + beta.unsqueeze(1)

    h = member_forward(model, x, idx, normalize)
    k, _, c = h.shape
    per = F.cross_entropy(h.reshape(k * n, c), y.repeat(k), reduction="none").view(k, n).mean(1)
    return per.double().cpu().numpy()


def run(
    data: Data,
    settings: Sequence[Mapping],
    seeds: Sequence[int],
    *,
    batch_norm: bool,
    depth: int,
    width: int,
    steps: int,
    batch_size: int,
    eval_every: int,
    activation: str = "sigmoid",
    stages: Sequence[int] = (),
    fixed: tuple[Sequence[bool], FixedSet] | None = None,
) -> Sweep:
    """Train ``len(settings) * len(seeds)`` networks as one :class:`BatchedMLP`.

    Each setting is a mapping with ``lr`` and optionally ``init`` (default
    ``"default"``), ``init_scale`` (default 1) and ``lsuv`` (default False:
    when True, :func:`bnbook.models.lsuv_init` rescales the member's hidden
    layers on the first :data:`LSUV_BATCH` training images before training;
    ``"output"`` rescales its output layer too). With ``batch_norm`` the
    rescaled hidden weights only change the scale that batch norm divides out. Seed ``r`` sets both
    the initial weights and the data order of its member, so the same seed
    gives the same batches in every setting.

    ``stages``, steps strictly between 0 and ``steps``, split training into
    parts; validation and test accuracy are recorded after each part and at
    the end. Part ``j`` draws its batches with the seeds shifted by
    ``1000 * j``, so the batches after a stage boundary differ from those at
    the start.

    ``fixed = (chosen, fixed_set)`` measures the runs of the settings where
    ``chosen`` is True on the fixed set after every step from
    ``fixed_set.start`` on (training in one part only), while they train;
    the result's ``fixed_loss`` holds it.
    """
    settings = [{"init": "default", "init_scale": 1.0, "lsuv": False, **s} for s in settings]
    members = [(s, r) for s in settings for r in seeds]
    if any(not 0 < int(b) < steps for b in stages):
        raise ValueError(f"stages must lie strictly between 0 and steps ({steps}), got {list(stages)}")
    bounds = sorted({int(b) for b in stages} | {int(steps)})
    device = data.x_train.device
    sizes = [data.x_train.shape[1]] + [width] * depth + [10]
    model = BatchedMLP(
        sizes,
        seeds=[r for _, r in members],
        activation=activation,
        batch_norm=batch_norm,
        init=[s["init"] for s, _ in members],
        init_scale=[s["init_scale"] for s, _ in members],
        device=device,
    )
    _apply_lsuv(model, [s["lsuv"] for s, _ in members], data.x_train[:LSUV_BATCH])
    lrs = [s["lr"] for s, _ in members]
    losses, evals, accs, vals, tests, div = [], [], [], [], [], []
    watch: dict = {}
    if fixed is not None:
        chosen, fs = fixed
        if len(bounds) > 1 or not 0 < fs.start < steps:
            raise ValueError(f"a fixed set needs one part and 0 < start < steps ({steps}), got {fs.start}")
        watched = [m for m in range(len(members)) if chosen[m // len(seeds)]]
        xe, ye = data.x_train[: fs.n_eval], data.y_train[: fs.n_eval]

        def measure(t: int, model: BatchedMLP) -> np.ndarray | None:
            return _fixed_set_loss(model, xe, ye, watched) if t >= fs.start else None

        watch = {"record": measure}
    done = 0
    for j, end in enumerate(bounds):
        hist = train_batched(
            model,
            data.x_train,
            data.y_train,
            lrs=lrs,
            steps=end - done,
            batch_size=batch_size,
            seeds=[r + 1000 * j for _, r in members],
            eval_every=eval_every,
            x_eval=data.x_test,
            y_eval=data.y_test,
            **watch,
        )
        first = 0 if j == 0 else 1  # step 0 of a later part repeats the previous part's last evaluation
        losses.append(hist.loss)
        evals.append(hist.eval_steps[first:] + done)
        accs.append(hist.eval_acc[:, first:])
        div.append(hist.diverged)
        _, va = evaluate_batched(model, data.x_val, data.y_val)
        _, te = evaluate_batched(model, data.x_test, data.y_test)
        vals.append(va)
        tests.append(te)
        done = end
    shape = (len(settings), len(seeds))
    diverged = np.any(div, axis=0)
    val_at = np.where(diverged[:, None], 0.1, np.stack(vals, axis=1))
    test_at = np.where(diverged[:, None], 0.1, np.stack(tests, axis=1))
    loss = np.concatenate(losses, axis=1)
    fixed_loss = None
    if watch:
        measured = np.stack([r for r in hist.records if r is not None], axis=1)
        fixed_loss = np.full((len(members), measured.shape[1]), np.nan)
        fixed_loss[watched] = measured
        fixed_loss = fixed_loss.reshape(*shape, -1)
    return Sweep(
        settings,
        loss.reshape(*shape, -1),
        np.concatenate(evals),
        np.concatenate(accs, axis=1).reshape(*shape, -1),
        val_at[:, -1].reshape(shape),
        diverged.reshape(shape),
        tuple(bounds),
        val_at.reshape(*shape, -1),
        test_at.reshape(*shape, -1),
        model,
        fixed_loss=fixed_loss,
    )


def run_nets(
    data: Data,
    names: Sequence[str],
    settings: Sequence[Mapping],
    seeds: Sequence[int],
    fixed_set: FixedSet | None = None,
    **kw,
) -> dict[str, Sweep]:
    """:func:`run` for each network of :data:`NETS` in ``names`` over the same ``settings``.

    The plain networks share one batched model, batch norm gets its own; the
    two train side by side in worker processes (:func:`bnbook.parallel.run`,
    one thread each, so the numbers do not depend on the number of cores).
    A setting's ``init`` (for example ``"normal"`` with an ``init_scale``)
    overrides the network's own; ``lsuv`` stays the network's. With a
    :class:`FixedSet`, its runs are also measured on the fixed set while
    they train (see :func:`smoothness_of`).
    """
    return run_many(data, [dict(names=names, settings=settings, seeds=seeds, fixed_set=fixed_set, **kw)])[0]


def run_many(data: Data, jobs: Sequence[Mapping]) -> list[dict[str, Sweep]]:
    """:func:`run_nets` for every job (a mapping of its arguments after ``data``), all side by side.

    Every batched model of every job is one call of :func:`bnbook.parallel.run`,
    so a grid of sweeps (over depths, say) keeps all workers busy; each
    job's result is what :func:`run_nets` returns for it, number for number.
    """
    calls, slots = [], []
    for j, job in enumerate(jobs):
        job = dict(job)
        names, settings, seeds = job.pop("names"), job.pop("settings"), job.pop("seeds")
        fixed_set = job.pop("fixed_set", None)
        for bn in (False, True):
            group = [n for n in names if NETS[n]["batch_norm"] == bn]
            if not group:
                continue
            rows = [{"init": NETS[n]["init"], **s, "lsuv": NETS[n]["lsuv"]} for n in group for s in settings]
            kw = dict(job)
            if fixed_set is not None:
                chosen = [n in fixed_set.names and s["lr"] in fixed_set.lrs for n in group for s in settings]
                kw["fixed"] = (chosen, fixed_set) if any(chosen) else None
            calls.append(partial(run, data, rows, seeds, batch_norm=bn, **kw))
            slots.append((j, group, len(settings)))
    found: list[dict[str, Sweep]] = [{} for _ in jobs]
    for (j, group, n_settings), res in zip(slots, parallel.run(calls), strict=True):
        for i, n in enumerate(group):
            found[j][n] = res.take(slice(i * n_settings, (i + 1) * n_settings))
    return [{n: got[n] for n in job["names"]} for job, got in zip(jobs, found, strict=True)]


def smoothness_of(
    sweeps: Mapping[str, Sweep], fixed_set: FixedSet
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The runs of a sweep measured with ``fixed_set`` (:func:`run_nets`), as :func:`smoothness` gives them.

    Returns ``{name: (mini-batch losses (len(lrs), seeds, steps), fixed-set
    losses (len(lrs), seeds, steps - start + 1))}``; entry ``j`` of the second
    is the loss after ``start + j`` steps, so its consecutive differences are
    the changes made by the steps after step ``start``.
    """
    out = {}
    for name in fixed_set.names:
        sw = sweeps[name]
        if sw.fixed_loss is None:
            raise ValueError(f"the sweep of {name!r} was not run with this fixed set")
        rows = [next(j for j, s in enumerate(sw.settings) if s["lr"] == lr) for lr in fixed_set.lrs]
        out[name] = (sw.loss[rows], sw.fixed_loss[rows])
    return out


def continue_runs(
    data: Data,
    sweeps: Mapping[str, Sweep],
    lrs: Mapping[str, Sequence[float]],
    *,
    steps: int,
    batch_size: int,
) -> dict[str, Sweep]:
    """Train some runs of a finished sweep on, to ``steps`` steps in all, instead of training them again.

    ``lrs[name]`` picks the runs of network ``name`` (every seed) at those
    learning rates. The sweep's training is the first part and its last
    reading the first stage: the result is what :func:`run_nets` with the
    sweep's settings, ``steps`` and ``stages=(sweep steps,)`` returns, bit
    for bit, since the second part draws its batches with the seeds shifted
    by 1000 and the members never interact. ``val_at`` and ``test_at`` hold
    the two stages; ``model`` is the continued selection.
    """
    first = {name: sweeps[name] for name in lrs}
    start = int(next(iter(first.values())).loss.shape[2])
    if not start < steps:
        raise ValueError(f"steps must exceed the sweep's {start} steps, got {steps}")
    models: dict[int, list[tuple[str, list[int]]]] = {}  # the runs to go on with, per batched model
    for name, sw in first.items():
        rows = [next(j for j, s in enumerate(sw.settings) if s["lr"] == lr) for lr in lrs[name]]
        models.setdefault(id(sw.model), []).append((name, rows))
    selections = []
    for picks in models.values():
        runs = [(first[n], j, r) for n, rows in picks for j in rows for r in range(first[n].loss.shape[1])]
        sel = first[picks[0][0]].model.select([sw.member_index(j, r) for sw, j, r in runs])
        selections.append((picks, sel, [sw.settings[j]["lr"] for sw, j, _ in runs]))
    trained = parallel.run(  # the batched models side by side, in worker processes
        [partial(_train_on, data, sel, rates, steps - start, batch_size) for _, sel, rates in selections]
    )
    out: dict[str, Sweep] = {}
    for (picks, _, _), (sel, hist, va, te) in zip(selections, trained, strict=True):
        done = 0
        for n, rows in picks:
            sw, r = first[n], first[n].loss.shape[1]
            part = slice(done, done + len(rows) * r)
            done += len(rows) * r
            shape = (len(rows), r)
            diverged = sw.diverged[rows] | hist.diverged[part].reshape(shape)
            val_at = np.stack([sw.val_at[rows, :, -1], va[part].reshape(shape)], axis=2)
            test_at = np.stack([sw.test_at[rows, :, -1], te[part].reshape(shape)], axis=2)
            val_at = np.where(diverged[..., None], 0.1, val_at)
            test_at = np.where(diverged[..., None], 0.1, test_at)
            out[n] = Sweep(
                [sw.settings[j] for j in rows],
                np.concatenate([sw.loss[rows], hist.loss[part].reshape(*shape, -1)], axis=2),
                np.array([start, steps]),
                test_at,
                val_at[:, :, -1],
                diverged,
                (start, steps),
                val_at,
                test_at,
                sel,
            )
    return {n: out[n] for n in lrs}


def _train_on(
    data: Data, sel: BatchedMLP, lrs: list[float], steps: int, batch_size: int
) -> tuple[BatchedMLP, BatchedHistory, np.ndarray, np.ndarray]:
    """:func:`continue_runs`'s second part for one batched model: it, its history, val and test accuracy."""
    hist = train_batched(
        sel,
        data.x_train,
        data.y_train,
        lrs=lrs,
        steps=steps,
        batch_size=batch_size,
        seeds=[s + 1000 for s in sel.seeds],
        x_eval=data.x_test,
        y_eval=data.y_test,
    )
    _, va = evaluate_batched(sel, data.x_val, data.y_val)
    _, te = evaluate_batched(sel, data.x_test, data.y_test)
    return sel, hist, va, te


# --- statistics ----------------------------------------------------------------------------------
def smooth(loss: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the last axis over consecutive windows: (centre steps, smoothed values)."""
    n = loss.shape[-1] // window
    means = loss[..., : n * window].reshape(*loss.shape[:-1], n, window).mean(-1)
    return (np.arange(n) + 0.5) * window, means


def roughness(loss: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """How jagged a loss curve is over steps ``start`` to ``stop`` (last axis).

    Returns ``(mean |L[t+1] - L[t]|, that divided by the mean loss)``: the
    mean absolute step-to-step change, and the same relative to the level of
    the loss, so that a curve that is lower is not called smoother for that
    reason alone. NaN where the member diverged.
    """
    seg = loss[..., start:stop]
    jump = np.abs(np.diff(seg, axis=-1)).mean(-1)
    return jump, jump / seg.mean(-1)


def steps_to_reach(acc: np.ndarray, eval_steps: np.ndarray, target: float) -> np.ndarray:
    """First evaluated step at which ``acc`` (..., n_evals) reaches ``target``; NaN if never."""
    hit = acc >= target
    first = np.where(hit.any(-1), eval_steps[hit.argmax(-1)], np.nan)
    return first.astype(float)


def largest_trainable(lrs: Sequence[float], final_acc: np.ndarray, threshold: float) -> float:
    """Largest learning rate whose mean final accuracy (over seeds, last axis) is >= ``threshold``.

    NaN when none trains.
    """
    ok = [lr for lr, acc in zip(lrs, final_acc, strict=True) if np.mean(acc) >= threshold]
    return max(ok) if ok else float("nan")


def best_by_validation(val_acc: np.ndarray) -> int:
    """Index of the setting (first axis) with the highest mean validation accuracy over seeds."""
    return int(np.argmax(np.mean(val_acc, axis=1)))


# --- batch norm with other statistics, and Adam ---------------------------------------------------
def forward_stats(
    model: BatchedMLP,
    x: torch.Tensor,
    groups: Sequence[tuple[int, int | None]],
    x_full: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of a batch-normalized :class:`BatchedMLP` whose statistics come from elsewhere.

    Parameters
    ----------
    model : BatchedMLP with ``batch_norm=True``
    x : Tensor (K, B, D)
        Each member's batch.
    groups : list of (count, g)
        Consecutive members, ``count`` at a time: with ``g`` an integer, each
        member normalizes every run of ``g`` examples of its batch with their
        own mean and variance (ghost batches; ``g = B`` is ordinary batch
        norm); with ``g = None`` it normalizes with the mean and variance of
        ``x_full`` (N, D), passed through the same layers, so its
        normalization carries no batch noise at all.
    x_full : Tensor (N, D), needed when some ``g`` is None

    The gradient flows through the statistics in every case; running
    statistics are not touched.
    """
    if not model.batch_norm:
        raise ValueError("forward_stats needs a model with batch_norm=True")
    if sum(c for c, _ in groups) != model.k:
        raise ValueError(f"groups must cover all {model.k} members, got {list(groups)}")
    act = ACTIVATIONS[model.activation]
    k, b, _ = x.shape
    full = [i for i, (_, g) in enumerate(groups) if g is None]
    if full and x_full is None:
        raise ValueError("x_full is needed for members normalized with the whole set's statistics")
    starts = np.cumsum([0] + [c for c, _ in groups])
    hf = {i: x_full.unsqueeze(0).expand(groups[i][0], -1, -1) for i in full}
    h = x
    last = len(model.weights) - 1
    for layer, w in enumerate(model.weights):
        if layer == last:
            return torch.baddbmm(model.biases[0].unsqueeze(1), h, w)
        z = torch.bmm(h, w)
        parts = []
        for i, (count, g) in enumerate(groups):
            zi = z[starts[i] : starts[i] + count]
            wi = w[starts[i] : starts[i] + count]
            if g is None:
                zf = torch.bmm(hf[i], wi)
                mean, rstd = _moments(zf, 1, model.eps)
                hf[i] = (zf - mean) * rstd
                parts.append((zi - mean) * rstd)
            else:
                if b % g:
                    raise ValueError(f"ghost batch size {g} must divide the batch size {b}")
                zg = zi.reshape(count, b // g, g, -1)
                mean, rstd = _moments(zg, 2, model.eps)
                parts.append(((zg - mean) * rstd).reshape(count, b, -1))
        gamma, beta = model.gammas[layer].unsqueeze(1), model.betas[layer].unsqueeze(1)
        h = act(torch.cat(parts) * gamma + beta)
        for i in full:
            s = slice(starts[i], starts[i] + groups[i][0])
            hf[i] = act(hf[i] * gamma[s] + beta[s])
    raise AssertionError("unreachable")  # pragma: no cover


def train_members(
    model: BatchedMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float | Sequence[float],
    steps: int,
    batch_size: int,
    *,
    optimizer: str = "sgd",
    forward: Callable[[BatchedMLP, torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Train every member on its own batches with plain SGD or Adam; returns losses (K, steps).

    Member ``k`` draws its batches from ``torch.Generator().manual_seed(model.seeds[k])``
    and steps with ``lr`` (one float for all, or one per member).
    Adam uses PyTorch's defaults (betas 0.9 and 0.999, eps 1e-8) and is written
    out elementwise, so each member gets exactly the Adam step of its own loss.
    ``forward(model, xb)`` replaces ``model(xb)``, for example a
    :func:`forward_stats` with ghost batches. ``after_step(t)`` is called after
    the update of step ``t`` (for example to measure the loss on a fixed set).
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    forward = forward or (lambda m, xb: m(xb))
    params = list(model.parameters())
    if isinstance(lr, int | float):
        rates = [float(lr)] * len(params)
    else:
        if len(lr) != model.k:
            raise ValueError(f"need one learning rate per member ({model.k}), got {len(lr)}")
        lr_k = torch.tensor([float(v) for v in lr], device=x.device)
        rates = [lr_k.view(-1, *([1] * (p.dim() - 1))).to(p.dtype) for p in params]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    gens = [torch.Generator().manual_seed(s) for s in model.seeds]
    idx = torch.stack([torch.randint(0, x.shape[0], (steps, batch_size), generator=g) for g in gens], 1)
    idx = idx.to(x.device)
    k, c = model.k, model.sizes[-1]
    losses = torch.empty(steps, k, dtype=torch.float64)
    model.train()
    for t in range(steps):
        xb, yb = x[idx[t]], y[idx[t]]
        logits = forward(model, xb)
        per = F.cross_entropy(logits.reshape(-1, c), yb.reshape(-1), reduction="none").view(k, -1).mean(1)
        for p in params:
            p.grad = None
        per.sum().backward()
        with torch.no_grad():
            losses[t] = per.double()
            for p, a, v, rate in zip(params, m1, m2, rates, strict=True):
                if optimizer == "sgd":
                    if isinstance(rate, float):
                        p.sub_(p.grad, alpha=rate)
                    else:
                        p.sub_(p.grad * rate)
                    continue
                a.lerp_(p.grad, 0.1)
                v.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                denom = (v / (1 - 0.999 ** (t + 1))).sqrt_().add_(1e-8)
                if isinstance(rate, float):
                    p.addcdiv_(a, denom, value=-rate / (1 - 0.9 ** (t + 1)))
                else:
                    p.sub_(a / denom * (rate / (1 - 0.9 ** (t + 1))))
        if after_step is not None:
            after_step(t)
    return losses.T.numpy()


@torch.no_grad()
def evaluate_members(
    model: BatchedMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    forward: Callable[[BatchedMLP, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean cross-entropy and accuracy of every member on ``(x, y)``, each of shape (K,).

    Without ``forward`` the model runs in eval mode (running statistics);
    ``forward(model, x3)`` with ``x3`` of shape (K, N, D) replaces it.
    """
    x3 = x.unsqueeze(0).expand(model.k, -1, -1)
    if forward is None:
        was = model.training
        model.eval()
        logits = model(x3)
        model.train(was)
    else:
        logits = forward(model, x3)
    k, n, c = logits.shape
    loss = F.cross_entropy(logits.reshape(k * n, c), y.repeat(k), reduction="none").view(k, n).mean(1)
    acc = (logits.argmax(2) == y).double().mean(1)
    return loss.double().cpu().numpy(), acc.cpu().numpy()


def _members(
    data: Data, names: Sequence[str], seeds: Sequence[int], sizes: Sequence[int], x_init: torch.Tensor
) -> dict[bool, tuple[list[str], BatchedMLP]]:
    """One BatchedMLP for the plain networks among ``names`` and one for batch norm, seeds innermost."""
    out = {}
    for bn in (False, True):
        group = [n for n in names if NETS[n]["batch_norm"] == bn]
        if group:
            model = BatchedMLP(
                sizes,
                seeds=[r for _ in group for r in seeds],
                batch_norm=bn,
                init=[NETS[n]["init"] for n in group for _ in seeds],
                device=data.x_train.device,
            )
            _apply_lsuv(model, [NETS[n]["lsuv"] for n in group for _ in seeds], x_init)
            out[bn] = (group, model)
    return out


def run_optimizer(
    data: Data,
    names: Sequence[str],
    seeds: Sequence[int],
    *,
    optimizer: str,
    lr: float,
    steps: int,
    depth: int,
    width: int,
    batch_size: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train the networks ``names`` of :data:`NETS` with :func:`train_members` (SGD or Adam).

    Returns ``{name: (training losses (seeds, steps), final test accuracy (seeds,))}``.
    """
    sizes = [data.x_train.shape[1]] + [width] * depth + [10]
    res: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for group, model in _members(data, names, seeds, sizes, data.x_train[:LSUV_BATCH]).values():
        loss = train_members(model, data.x_train, data.y_train, lr, steps, batch_size, optimizer=optimizer)
        _, acc = evaluate_members(model, data.x_test, data.y_test)
        r = len(seeds)
        for i, n in enumerate(group):
            res[n] = (loss[i * r : (i + 1) * r], acc[i * r : (i + 1) * r])
    return {n: res[n] for n in names}


def overfit(
    data: Data,
    n_train: int,
    seeds: Sequence[int],
    *,
    lrs: Sequence[float],
    steps: int,
    depth: int,
    width: int,
    batch_size: int,
    ghost_sizes: Sequence[int],
    plain: Sequence[str] = ("xavier", "lsuv"),
) -> dict[str, dict[str, np.ndarray]]:
    """Train on the first ``n_train`` training images only, and measure how well each network generalizes.

    The networks: the plain networks ``plain`` (names of :data:`NETS`), ``"bn"`` (batch norm
    with the statistics of each batch), ``"ghost<g>"`` for each ``g`` in
    ``ghost_sizes`` (statistics of groups of ``g`` examples, more noise) and
    ``"full"`` (statistics of all ``n_train`` images at every step, no noise).
    Every batch-normalized network is evaluated with the statistics of all
    ``n_train`` training images, so they differ only in how they were trained.
    Each network is trained at every learning rate of ``lrs`` with every seed.

    Returns ``{name: {"train_acc", "test_acc", "train_loss", "test_loss": (len(lrs), seeds)}}``.
    """
    xs, ys = data.x_train[:n_train], data.y_train[:n_train]
    sizes = [data.x_train.shape[1]] + [width] * depth + [10]
    runs = [s for _ in lrs for s in seeds]  # learning rate outer, seed inner
    rates = [lr for lr in lrs for _ in seeds]
    stats: list[tuple[str, int | None]] = [(f"ghost{g}", g) for g in ghost_sizes]
    stats += [("bn", batch_size), ("full", None)]
    common = dict(data=data, xs=xs, ys=ys, sizes=sizes, runs=runs, rates=rates, steps=steps)
    common["batch_size"] = batch_size
    # Three calls side by side: the plain networks, batch norm with batch (and ghost) statistics, and
    # batch norm with full-set statistics (about half the work on its own). Members never interact; at
    # the chapter's widths (16, 32) the split gives the same numbers bit for bit (tested), at some other
    # widths the losses may differ in the last bits, since a member's products then depend on its position.
    calls = [partial(_overfit_bn, stats=stats[-1:], **common)]
    calls.append(partial(_overfit_bn, stats=stats[:-1], **common))
    if plain:
        calls.append(partial(_overfit_plain, names=list(plain), **common))
    out: dict[str, dict[str, np.ndarray]] = {}
    for part in parallel.run(calls):
        out.update(part)
    order = [*plain, *(n for n, _ in stats)]
    return {n: {key: v.reshape(len(lrs), len(seeds)) for key, v in out[n].items()} for n in order}


def _overfit_record(
    names: Sequence[str], model: BatchedMLP, data: Data, xs: torch.Tensor, ys: torch.Tensor, fwd=None
) -> dict[str, dict[str, np.ndarray]]:
    """Train and test loss and accuracy of each consecutive block of members, one block per name."""
    ltr, atr = evaluate_members(model, xs, ys, fwd)
    lte, ate = evaluate_members(model, data.x_test, data.y_test, fwd)
    r = model.k // len(names)
    parts = (("train_acc", atr), ("test_acc", ate), ("train_loss", ltr), ("test_loss", lte))
    return {n: {key: v[i * r : (i + 1) * r] for key, v in parts} for i, n in enumerate(names)}


def _overfit_plain(
    names: list[str], data: Data, xs: torch.Tensor, ys: torch.Tensor, sizes: list[int], runs: list[int],
    rates: list[float], steps: int, batch_size: int,
) -> dict[str, dict[str, np.ndarray]]:
    """The plain networks of :func:`overfit`."""
    group, model = _members(data, names, runs, sizes, xs)[False]
    train_batched(model, xs, ys, rates * len(group), steps, batch_size)  # what train_members does, faster
    return _overfit_record(group, model, data, xs, ys)


def _overfit_bn(
    stats: list[tuple[str, int | None]], data: Data, xs: torch.Tensor, ys: torch.Tensor, sizes: list[int],
    runs: list[int], rates: list[float], steps: int, batch_size: int,
) -> dict[str, dict[str, np.ndarray]]:
    """The batch-normalized networks of :func:`overfit` named in ``stats`` (name, ghost size or None)."""
    r = len(runs)
    bn = BatchedMLP(sizes, seeds=[s for _ in stats for s in runs], batch_norm=True, device=xs.device)
    groups = [(r, g) for _, g in stats]
    fwd = partial(_forward_groups, groups=groups, x_full=xs)
    train_members(bn, xs, ys, rates * len(stats), steps, batch_size, forward=fwd)
    return _overfit_record([n for n, _ in stats], bn, data, xs, ys, partial(_forward_full, x_full=xs))


def _forward_groups(model: BatchedMLP, xb: torch.Tensor, groups, x_full: torch.Tensor) -> torch.Tensor:
    return forward_stats(model, xb, groups, x_full)


def _forward_full(model: BatchedMLP, xb: torch.Tensor, x_full: torch.Tensor) -> torch.Tensor:
    return forward_stats(model, xb, [(model.k, None)], x_full)


def smoothness(
    data: Data,
    names: Sequence[str],
    lrs: Sequence[float],
    seeds: Sequence[int],
    *,
    steps: int,
    start: int,
    depth: int,
    width: int,
    batch_size: int,
    n_eval: int | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train the networks ``names`` of :data:`NETS` with SGD and record the loss on a fixed set.

    After every update from step ``start - 1`` on, each member's cross-entropy
    on the first ``n_eval`` training images (default: all of them) is
    measured; batch norm normalizes them with their own statistics, so the
    measurement carries no batch noise. Every network sees the same batches
    for the same seed.

    Returns ``{name: (mini-batch losses (len(lrs), seeds, steps),
    whole-set losses (len(lrs), seeds, steps - start + 1))}``; entry ``j`` of
    the second is the loss after step ``start - 1 + j``, so its consecutive
    differences are the changes made by steps ``start`` to ``steps - 1``.
    """
    if not 0 < start < steps:
        raise ValueError(f"start must lie strictly between 0 and steps ({steps}), got {start}")
    sizes = [data.x_train.shape[1]] + [width] * depth + [10]
    runs = [s for _ in lrs for s in seeds]
    rates = [lr for lr in lrs for _ in seeds]
    xs, ys = data.x_train, data.y_train
    xe, ye = xs[:n_eval], ys[:n_eval]
    shape = (len(lrs), len(seeds))
    res: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for group, model in _members(data, names, runs, sizes, data.x_train[:LSUV_BATCH]).values():
        x3 = xe.unsqueeze(0).expand(model.k, -1, -1)
        whole = np.empty((model.k, steps - start + 1))

        @torch.no_grad()
        def measure(t: int, model=model, x3=x3, whole=whole) -> None:
            if t >= start - 1:
                logits = _forward_own_stats(model, x3)
                k, n, c = logits.shape
                per = F.cross_entropy(logits.reshape(k * n, c), ye.repeat(k), reduction="none")
                whole[:, t - start + 1] = per.view(k, n).mean(1).double().cpu().numpy()

        loss = train_members(model, xs, ys, rates * len(group), steps, batch_size, after_step=measure)
        r = len(runs)
        for i, n in enumerate(group):
            s = slice(i * r, (i + 1) * r)
            res[n] = (loss[s].reshape(*shape, -1), whole[s].reshape(*shape, -1))
    return {n: res[n] for n in names}


def _forward_own_stats(model: BatchedMLP, x3: torch.Tensor) -> torch.Tensor:
    """Logits with batch norm normalizing ``x3`` (K, N, D) by its own statistics (running ones untouched)."""
    if not model.batch_norm:
        return model(x3)
    return forward_stats(model, x3, [(model.k, x3.shape[1])])


# --- figures ------------------------------------------------------------------------------------
def plot_curves(ax: Axes, x: np.ndarray, curves: Mapping[str, np.ndarray]) -> None:
    """One band per network of :data:`NETS` (``curves[name]`` has shape (seeds, len(x)))."""
    for name, runs in curves.items():
        band(ax, x, runs, **look(name))


def plot_sweep(
    ax: Axes,
    x: Sequence[float],
    values: Mapping[str, np.ndarray],
    *,
    logx: bool = True,
    threshold: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Mean and min-max band over seeds (last axis of each ``values[name]``) against a swept setting."""
    labels = labels or {}
    for name, v in values.items():
        kw = look(name, **({"label": labels[name]} if name in labels else {}))
        band(ax, np.asarray(x, float), np.asarray(v, float).T, **kw)
    if logx:
        ax.set_xscale("log")
    if threshold is not None:
        ax.axhline(threshold, color="#222222", lw=1, ls=":", label=f"threshold {threshold:g}")


def make_explorer_describe(
    curves: Mapping[tuple[float, int], Mapping[str, np.ndarray]], window: int
) -> Callable[..., str]:
    """A ``describe(lr, depth)`` for :class:`bnbook.widgets.Explorer`, saying what a frame shows.

    For the frame that :func:`make_explorer_draw` draws from the same
    ``curves``: each network's training loss in the last window (the mean
    over seeds of the smoothed curve the frame draws) and which network is
    lowest there, for a reader who cannot see the picture.
    """

    def describe(lr: float, depth: int) -> str:
        ends = {}
        for name, loss in curves[lr, depth].items():
            x, sm = smooth(np.where(np.isfinite(loss), loss, np.nan), window)
            ends[name] = float(np.nanmean(sm[:, -1]))
        steps = int(x[-1] + window / 2)
        shown = {n: sig(v, 2) for n, v in ends.items()}  # two significant digits, as read out
        text = "; ".join(f"{look(n)['label']}: {v:g}" for n, v in shown.items())
        low = min(shown.values())
        tied = [look(n)["label"] for n, v in shown.items() if v == low]
        head = f"Training loss in the last {window} of {steps} steps, mean of the seeds"
        if len(tied) > 1:
            return f"{head}: {text}. Lowest: {' and '.join(tied)}, about the same."
        return f"{head}: {text}. Lowest: {tied[0]}."

    return describe


def make_explorer_draw(
    curves: Mapping[tuple[float, int], Mapping[str, np.ndarray]], window: int, y_max: float
) -> Callable[..., None]:
    """A ``draw(fig, lr, depth)`` for :class:`bnbook.widgets.Explorer` from precomputed loss curves.

    ``curves[lr, depth][name]`` holds training losses of shape (seeds, steps)
    for networks named in :data:`NETS`.
    """

    def draw(fig: Figure, lr: float, depth: int) -> None:
        ax = fig.add_subplot()
        runs = curves[lr, depth]
        for name, loss in runs.items():
            x, sm = smooth(np.where(np.isfinite(loss), loss, np.nan), window)
            band(ax, x, np.minimum(sm, y_max), **look(name))
        ax.set_ylim(0, y_max)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"training loss (mean of {window} steps)")
        ax.set_title(f"learning rate {lr:g}, {depth} hidden layers (5 seeds, min-max band)")
        ax.legend(loc="upper right", fontsize=9)

    return draw


# --- timing -------------------------------------------------------------------------------------
def time_batched_vs_loop(
    data: Data, k: int, depth: int, width: int, steps: int, batch_size: int, lr: float
) -> tuple[float, float, float]:
    """Seconds to train ``k`` BN networks as one :class:`BatchedMLP` and one by one as ``nn.Sequential``.

    The loop uses the batched model's own members as starting points and the
    same batches, so it does the same arithmetic. Returns
    ``(batched seconds, loop seconds, max |final weight difference|)``.
    """
    sizes = [data.x_train.shape[1]] + [width] * depth + [10]
    seeds = list(range(k))
    model = BatchedMLP(sizes, seeds=seeds, batch_norm=True, device=data.x_train.device)
    nets = [model.member(i) for i in range(k)]
    t0 = time.perf_counter()
    train_batched(model, data.x_train, data.y_train, lr, steps, batch_size)
    t1 = time.perf_counter()
    n = data.x_train.shape[0]
    for i, net in enumerate(nets):
        gen = torch.Generator().manual_seed(seeds[i])
        idx_all = torch.randint(0, n, (steps, batch_size), generator=gen).to(data.x_train.device)
        params = list(net.parameters())
        for t in range(steps):
            idx = idx_all[t]
            loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.sub_(p.grad, alpha=lr)
    t2 = time.perf_counter()
    diff = max((model.weights[0][i] - nets[i][0].weight.T).abs().max().item() for i in range(k))
    return t1 - t0, t2 - t1, diff
