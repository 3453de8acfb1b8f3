"""Chapter 14's demo package ``bnbook.demos.across_processes``: its worker tasks (run in real process
groups from one :class:`bnbook.distributed.Pool`), its arithmetic, and the pool itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.modules._functions as torch_functions

from bnbook.data import load_digits
from bnbook.demos import across_processes as ap
from bnbook.distributed import Pool, resolve
from bnbook.models import mlp
from bnbook.nn._sync import SyncBatchNormFunction

TRAIN = {"seeds": [3, 4], "steps": 6, "lr": 0.05, "hidden": 16, "eval_every": 3}
CHANNELS = [4, 8, 8, 16]


@pytest.fixture(scope="module")
def groups():
    """One pool of two processes: every task in the pair, the one-process control in a sub-group of rank 0."""
    data = load_digits(seed=0)
    train = {**TRAIN, "data": data}
    with Pool(2, timeout=180) as pool:
        two = pool.run(
            ap.run_tasks,
            [
                ("check", "sync_forward_check", {"sizes": [3, 6], "channels": 4, "seed": 5}),
                ("noise", "stat_noise", {"local_batch": 3, "n_batches": 4, "channels": 5, "seed": 1}),
                ("times", "allreduce_times", {"sizes": [1, 100], "repeats": 2, "inner": 2}),
                ("count", "count_collectives", {"channels": CHANNELS}),
                ("local", "ddp_train", {**train, "sync": False, "local_batch": 2}),
                ("sync", "ddp_train", {**train, "sync": True, "local_batch": 2}),
                ("recipe", "recipe", {"pair_size": 1, "steps": 2}),
            ],
        )
        # the same pool again, by name, in a sub-group of one process
        one = pool.run(
            "bnbook.demos.across_processes:run_tasks",
            [("single", "ddp_train", {**train, "sync": False, "local_batch": 4})],
            1,
        )
        # two sub-groups of one process each, side by side
        times = {"sizes": [1], "repeats": 1, "inner": 1}
        plan = pool.run(
            ap.run_plan,
            [((0,), [("a", "allreduce_times", times)]), ((1,), [("b", "allreduce_times", times)])],
        )
    assert [sorted(r) for r in plan] == [["a"], ["b"]]
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


def test_count_collectives_three_messages_per_layer(groups):
    two, _ = groups
    count = two[0]["count"]
    assert [name for name, _ in count["forward"]] == ["all_reduce"] * 2 * len(CHANNELS)
    assert [name for name, _ in count["backward"]] == ["all_reduce"] * len(CHANNELS)
    # C + 1 (sums and count), C (squared deviations) forward; 2C backward
    assert [n for _, n in count["forward"]] == [k for c in CHANNELS for k in (c + 1, c)]
    assert sorted(n for _, n in count["backward"]) == sorted(2 * c for c in CHANNELS)


def test_ddp_sync_reproduces_one_process_and_per_process_does_not(groups):
    two, one = groups
    assert one[1] is None  # rank 1 is outside the sub-group of one process
    single = one[0]["single"]["loss"]
    synced = (two[0]["sync"]["loss"] + two[1]["sync"]["loss"]) / 2
    local = (two[0]["local"]["loss"] + two[1]["local"]["loss"]) / 2
    np.testing.assert_allclose(synced, single, atol=1e-5)
    assert np.abs(local[:, 0] - single[:, 0]).max() > 1e-3  # per-shard statistics give another loss
    assert list(two[0]["sync"]["steps"]) == [0, 3, 6]
    assert two[0]["sync"]["test_acc"].shape == (2, 3) and single.shape == (2, 6)


def test_recipe_converts_before_wrapping_and_torch_refuses_cpu(groups):
    two, _ = groups
    r0, r1 = two[0]["recipe"], two[1]["recipe"]
    assert r0["layer"] == "SyncBatchNorm"
    np.testing.assert_array_equal(r0["params"], r1["params"])  # DDP averaged over both ranks
    assert not np.allclose(r0["running_mean"], r1["running_mean"])  # sub-groups of one: own statistics
    # converted after wrapping: the converter keeps the parameter tensors, so DDP still averages them
    np.testing.assert_array_equal(r0["late_params"], r1["late_params"])
    assert np.abs(r0["swapped_params"] - r1["swapped_params"]).max() > 1e-4  # new parameters DDP never saw
    assert r0["swapped_error"].startswith("RuntimeError")
    for key in ("torch_refusal_ddp", "torch_refusal_step"):
        assert r0[key].startswith("ValueError") and "GPU" in r0[key]


def test_seed_stack_matches_one_mlp_per_seed():
    seeds = [0, 7]
    stack = ap.SeedStackMLP([64, 16, 16, 10], seeds)
    x = torch.randn(5, len(seeds), 64, generator=torch.Generator().manual_seed(1))
    out = stack(x)
    for s, seed in enumerate(seeds):
        torch.manual_seed(seed)
        single = mlp([64, 16, 16, 10], activation="relu", batch_norm=True)
        torch.testing.assert_close(out[:, s], single(x[:, s]), rtol=1e-5, atol=1e-5)


def test_tasks_refuse_to_run_outside_a_group():
    with pytest.raises(ValueError, match="process group"):
        ap.sync_forward_check(0, 1, [3])
    with pytest.raises(ValueError, match="process group"):
        ap.allreduce_times(0, 1, [1])


def test_run_tasks_rejects_unknown_tasks_and_bad_groups():
    with pytest.raises(ValueError, match="unknown task"):
        ap.run_tasks(0, 1, [("a", "no_such_task", {})])
    with pytest.raises(ValueError, match="group_size"):
        ap.run_tasks(0, 2, [], group_size=3)
    with pytest.raises(ValueError, match="ranks must be distinct"):
        ap.run_plan(0, 2, [((0, 2), [])])
    with pytest.raises(ValueError, match="share a label"):
        ap.run_plan(0, 2, [((0,), [("a", "stat_noise", {})]), ((1,), [("a", "stat_noise", {})])])


def test_collectives_read_from_the_source():
    torch_counts = ap.collectives_per_pass(torch_functions.SyncBatchNorm)
    # one all-gather forward (NCCL and gloo branches exclude each other), one all-reduce backward
    assert torch_counts["forward"]["per_layer"] == 1 and torch_counts["backward"]["per_layer"] == 1
    assert {name for _, name in torch_counts["forward"]["calls"]} <= {"all_gather", "all_gather_single"}
    ours = ap.collectives_per_pass(SyncBatchNormFunction)
    assert ours["forward"]["per_layer"] == 2 and ours["backward"]["per_layer"] == 1


def test_pool_names_and_failures():
    assert resolve("bnbook.demos.across_processes:run_tasks") is ap.run_tasks
    with pytest.raises(ValueError, match="module:function"):
        resolve("no colon here")
    with Pool(1, timeout=120) as pool:
        assert pool.run(ap.run_tasks, []) == [{}]
        with pytest.raises(RuntimeError, match="unknown task"):
            pool.run(ap.run_tasks, [("a", "no_such_task", {})])
        assert pool.closed
        with pytest.raises(RuntimeError, match="closed"):
            pool.run(ap.run_tasks, [])


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


def test_communication_models_closed_form():
    assert ap.ring_allreduce_seconds(1000, 1, 1e-5, 1e9) == pytest.approx(1e-5)
    # two processes: each byte crosses the link once in each of the two phases
    assert ap.ring_allreduce_seconds(1000, 2, 0.0, 1e9, 4) == pytest.approx(4000 / 1e9)
    # an all-gather brings the other P - 1 contributions to every process
    assert ap.ring_allgather_seconds(1000, 4, 0.0, 1e9, 4) == pytest.approx(3 * 4000 / 1e9)
    with pytest.raises(ValueError):
        ap.ring_allreduce_seconds(10, 0, 1e-5, 1e9)
    with pytest.raises(ValueError):
        ap.ring_allgather_seconds(10, 0, 1e-5, 1e9)


def test_ring_latency_per_step():
    # a ring all-reduce takes 2(P - 1) steps, an all-gather P - 1, each paying the latency
    assert ap.ring_allreduce_seconds(1, 4, 1e-5, 1e30, latency_per_step=True) == pytest.approx(6e-5)
    assert ap.ring_allgather_seconds(1, 4, 1e-5, 1e30, latency_per_step=True) == pytest.approx(3e-5)
    assert ap.ring_allreduce_seconds(1, 1, 1e-5, 1e30, latency_per_step=True) == 0.0


def test_ddp_train_per_copy_learning_rates_and_pair_eval():
    # one process: copies of the same seed at two rates start alike and then differ; the same
    # rate twice gives the same copy twice
    with Pool(1, timeout=120, preload=ap.PRELOAD) as pool:
        res = pool.run(
            ap.run_tasks,
            [
                (
                    "r",
                    "ddp_train",
                    {
                        **TRAIN,
                        "seeds": [3, 3, 3],
                        "lr": [0.05, 0.05, 0.5],
                        "sync": False,
                        "local_batch": 2,
                        "pair_eval": True,
                    },
                )
            ],
            1,
        )[0]["r"]
    assert np.array_equal(res["loss"][0], res["loss"][1])
    assert res["loss"][0, 0] == res["loss"][2, 0] and res["loss"][0, -1] != res["loss"][2, -1]
    assert res["pair_acc"].shape == (3,) and np.all((res["pair_acc"] >= 0) & (res["pair_acc"] <= 1))
    with pytest.raises(ValueError, match="one per seed"):
        ap.ddp_train(0, 1, False, [1, 2], lr=[0.1])
    with pytest.raises(ValueError, match="sync=False"):
        ap.ddp_train(0, 1, True, [1], pair_eval=True)


def test_seed_stack_subset_keeps_the_chosen_copies():
    stack = ap.SeedStackMLP([64, 16, 16, 10], [0, 7, 9])
    x = torch.randn(6, 3, 64, generator=torch.Generator().manual_seed(2))
    stack(x)  # training mode: the running statistics move
    part = stack.subset([2, 0])
    for model in (stack, part):
        model.eval()
    torch.testing.assert_close(part(x[:, [2, 0]]), stack(x)[:, [2, 0]], rtol=1e-6, atol=1e-6)
    assert part.norms[0].num_features == 2 * 16 and part.norms[0].running_mean.shape == (32,)
    with pytest.raises(ValueError, match="copies"):
        stack.subset([3])


def test_ddp_train_follows_some_copies_and_trains_others_on():
    data = load_digits(seed=0)
    base = {
        **TRAIN,
        "seeds": [3, 4, 3],
        "lr": [0.05, 0.05, 0.1],
        "data": data,
        "sync": False,
        "local_batch": 2,
    }
    with Pool(2, timeout=180, preload=ap.PRELOAD) as pool:
        short, long = pool.run(
            ap.run_tasks,
            [
                (
                    "short",
                    "ddp_train",
                    {**base, "eval_copies": [1], "extend_to": 12, "extend_copies": [2, 0]},
                ),
                ("long", "ddp_train", {**base, "steps": 12, "eval_every": 12}),
            ],
        )[0].values()
    acc = short["test_acc"]  # steps 0, 3, 6: copy 1 followed, the others at the ends only
    assert np.isfinite(acc[1]).all() and np.isfinite(acc[:, [0, -1]]).all() and np.isnan(acc[[0, 2], 1]).all()
    np.testing.assert_array_equal(short["extended_test_acc"], long["test_acc"][[2, 0], -1])
    np.testing.assert_array_equal(short["loss"], long["loss"][:, :6])
    with pytest.raises(ValueError, match="extend_to"):
        ap.ddp_train(0, 1, False, [1], steps=6, extend_to=3, extend_copies=[0])
