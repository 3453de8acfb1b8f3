"""Tests of bnbook.workers (run in real process groups) and bnbook.demos.across_processes (chapter 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnbook.data import load_digits
from bnbook.demos import across_processes as ap
from bnbook.distributed import launch
from bnbook.workers import allreduce_times, run_tasks, sync_forward_check

TRAIN = {"seeds": [3], "steps": 6, "lr": 0.05, "hidden": 16, "eval_every": 3}


@pytest.fixture(scope="module")
def groups():
    """One group of two processes and one of one process, each running every task once."""
    data = load_digits(seed=0)
    train = {**TRAIN, "data": data}
    two = launch(
        run_tasks,
        2,
        [
            ("check", "sync_forward_check", {"sizes": [3, 6], "channels": 4, "seed": 5}),
            ("noise", "stat_noise", {"local_batch": 3, "n_batches": 4, "channels": 5, "seed": 1}),
            ("times", "allreduce_times", {"sizes": [1, 100], "repeats": 2, "inner": 2}),
            ("local", "ddp_train", {**train, "sync": False, "local_batch": 2}),
            ("sync", "ddp_train", {**train, "sync": True, "local_batch": 2}),
        ],
        timeout=180,
    )
    one = launch(
        run_tasks, 1, [("single", "ddp_train", {**train, "sync": False, "local_batch": 4})], timeout=180
    )
    return two, one


def test_sync_forward_matches_torch_on_the_whole_batch(groups):
    two, _ = groups
    check = [r["check"] for r in two]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 4, 2, 2, generator=gen, dtype=torch.float64) * 3.0 + 2.0
    dy = torch.randn(9, 4, 2, 2, generator=gen, dtype=torch.float64)
    ref = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(4, generator=gen, dtype=torch.float64) + 0.5)
        ref.bias.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
    x.requires_grad_(True)
    ref(x).backward(dy)
    out = ref(x.detach())  # second call only for the output; running stats are compared below from the first
    np.testing.assert_allclose(np.concatenate([c["out"] for c in check]), out.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(np.concatenate([c["dx"] for c in check]), x.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(sum(c["dweight"] for c in check), ref.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(sum(c["dbias"] for c in check), ref.bias.grad.numpy(), atol=1e-12)
    assert [len(c["out"]) for c in check] == [3, 6]
    fresh = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    fresh(x.detach())
    for c in check:
        np.testing.assert_allclose(c["running_mean"], fresh.running_mean.numpy(), atol=1e-12)
        np.testing.assert_allclose(c["running_var"], fresh.running_var.numpy(), atol=1e-12)


def test_stat_noise_global_statistics_combine_the_shards(groups):
    two, _ = groups
    r0, r1 = two[0]["noise"], two[1]["noise"]
    np.testing.assert_allclose(r0["global_mean"], r1["global_mean"], atol=1e-12)
    # equal shards: the global mean is the mean of the shard means, and the global biased variance is
    # the mean of the shard variances plus the variance between the shard means (closed form)
    mean = (r0["local_mean"] + r1["local_mean"]) / 2
    var = (r0["local_var"] + r1["local_var"]) / 2 + ((r0["local_mean"] - r1["local_mean"]) / 2) ** 2
    np.testing.assert_allclose(r0["global_mean"], mean, atol=1e-12)
    np.testing.assert_allclose(r0["global_var"], var, atol=1e-12)
    assert r0["local_mean"].shape == (4, 5)
    assert not np.allclose(r0["local_mean"], r1["local_mean"])  # every rank draws its own data


def test_allreduce_times_shape(groups):
    two, _ = groups
    t = two[0]["times"]
    assert list(t["sizes"]) == [1, 100]
    assert t["seconds"].shape == (2, 2) and np.all(t["seconds"] > 0)


def test_ddp_sync_reproduces_one_process_and_per_process_does_not(groups):
    two, one = groups
    single = one[0]["single"]["loss"]
    synced = (two[0]["sync"]["loss"] + two[1]["sync"]["loss"]) / 2
    local = (two[0]["local"]["loss"] + two[1]["local"]["loss"]) / 2
    np.testing.assert_allclose(synced, single, atol=1e-5)
    assert np.abs(local[:, 0] - single[:, 0]).max() > 1e-3  # per-shard statistics give another loss
    assert list(two[0]["sync"]["steps"]) == [0, 3, 6]
    assert two[0]["sync"]["test_acc"].shape == (1, 3)


def test_workers_refuse_to_run_outside_a_group():
    with pytest.raises(ValueError, match="process group"):
        sync_forward_check(0, 1, [3])
    with pytest.raises(ValueError, match="process group"):
        allreduce_times(0, 1, [1])


def test_run_tasks_rejects_unknown_tasks():
    with pytest.raises(ValueError, match="unknown task"):
        run_tasks(0, 1, [("a", "no_such_task", {})])


def test_combine_shards_matches_the_whole_batch():
    rng = np.random.default_rng(0)
    shards = [rng.normal(100.0, 0.5, size=(n, 3)) for n in (1, 4, 17)]
    whole = np.concatenate(shards)
    mean, var = ap.combine_shards(shards)
    np.testing.assert_allclose(mean, whole.mean(0), rtol=1e-13)
    np.testing.assert_allclose(var, whole.var(0), rtol=1e-10)


def test_resnet50_counts_match_the_published_model():
    channels = ap.resnet50_bn_channels()
    assert len(channels) == 53 and sum(channels) == 26560
    assert ap.resnet50_parameter_count() == 25_557_032  # torchvision's resnet50()


def test_allreduce_model_closed_form():
    assert ap.ring_allreduce_seconds(1000, 1, 1e-5, 1e9) == pytest.approx(1e-5)
    # two processes: each byte crosses the link once in each of the two phases
    assert ap.ring_allreduce_seconds(1000, 2, 0.0, 1e9, 4) == pytest.approx(4000 / 1e9)
    with pytest.raises(ValueError):
        ap.ring_allreduce_seconds(10, 0, 1e-5, 1e9)
