"""Actor pool sizing from the config and the cluster's resources (pipeline.sizing)."""
from __future__ import annotations

import pytest

from configs import load_config
from pipeline.sizing import NodeCapacity, PoolSizes, SizingError, cluster_pool_sizes, packs, pool_sizes


def ray_cfg(*overrides: str):
    return load_config("pipeline", [f"ray.{o}" for o in overrides]).ray


def test_auto_on_cpus_only_runs_a_model_actor_on_every_core_and_shares_them_with_cpu_actors():
    """One single-threaded model actor per core; CPU actors at ceil(1.25 x cores x f / (1 - f)) for
    the CPU stages' share f = 0.2 (docs/scale.md works the 8-, 16- and 96-core cases): 1, 3, 5, 30;
    Ray's shares add up to the cores."""
    expected = {2: (1, 0.4, 2, 0.8), 8: (3, 0.5333, 8, 0.8), 16: (5, 0.64, 16, 0.8), 96: (30, 0.64, 96, 0.8)}
    for cores, (cpu_workers, cpu_share, model_workers, model_share) in expected.items():
        sizes = pool_sizes(ray_cfg(), cpus=cores, gpus=0, local=True)
        assert (sizes.cpu_workers, sizes.cpu_worker_cpus, sizes.model_workers, sizes.model_worker_cpus,
                sizes.model_worker_gpus) == (cpu_workers, cpu_share, model_workers, model_share, 0.0), cores
        assert cores - 1e-3 <= sizes.demand()[0] <= cores + 1e-9
    # every model lives in each model actor: memory caps their number on a CPU-only machine
    assert pool_sizes(ray_cfg(), cpus=16, gpus=0, local=True, memory_gb=20).model_workers == 6
    assert pool_sizes(ray_cfg(), cpus=16, gpus=0, local=True, memory_gb=2).model_workers == 1
    assert pool_sizes(ray_cfg(), cpus=32, gpus=4, local=True, memory_gb=20).model_workers == 4  # on GPUs


def test_cpu_only_sizing_follows_the_measured_share_and_the_thread_count():
    heavier = pool_sizes(ray_cfg("cpu_stage_share=0.4"), cpus=16, gpus=0, local=True)
    assert (heavier.cpu_workers, heavier.cpu_worker_cpus, heavier.model_workers, heavier.model_worker_cpus) == \
        (14, 0.4571, 16, 0.6)  # ceil(1.25 x 16 x 0.4 / 0.6) = 14 CPU actors
    two_threads = pool_sizes(ray_cfg("torch_threads=2"), cpus=16, gpus=0, local=True)
    assert (two_threads.model_workers, two_threads.model_worker_cpus) == (8, 1.6)
    assert pool_sizes(ray_cfg(), cpus=1, gpus=0, local=True).as_dict() == {
        "cpu_workers": 1, "cpu_worker_cpus": 0.2, "model_workers": 1, "model_worker_cpus": 0.8,
        "model_worker_gpus": 0.0}
    # a given part is kept and the auto parts fill the rest
    given = pool_sizes(ray_cfg("cpu_workers=2"), cpus=8, gpus=0, local=True)
    assert (given.cpu_workers, given.cpu_worker_cpus, given.model_workers, given.model_worker_cpus) == (2, 0.8, 8, 0.8)
    fewer = pool_sizes(ray_cfg("model_workers=4"), cpus=2, gpus=0, local=True)  # they share what is left
    assert (fewer.cpu_workers, fewer.cpu_worker_cpus, fewer.model_workers, fewer.model_worker_cpus) == (1, 0.4, 4, 0.4)
    whole = pool_sizes(ray_cfg("model_worker_cpus=1"), cpus=8, gpus=0, local=True)
    assert (whole.cpu_workers, whole.model_workers, whole.model_worker_cpus) == (3, 6, 1.0)
    with pytest.raises(SizingError, match="cpu_stage_share"):
        pool_sizes(ray_cfg("cpu_stage_share=1"), cpus=8, gpus=0, local=True)
    with pytest.raises(SizingError, match="take all 2 CPUs"):
        pool_sizes(ray_cfg("cpu_workers=2", "cpu_worker_cpus=1"), cpus=2, gpus=0, local=True)


def test_the_old_cpu_only_sizing_is_reachable_by_explicit_keys():
    """bench/pipeline.py compares the new default with the old one (one CPU actor per 8 cores on a
    whole core, a model actor on every other core) given explicitly."""
    old = pool_sizes(ray_cfg("cpu_workers=1", "cpu_worker_cpus=1", "model_worker_cpus=1"), cpus=2, gpus=0,
                     local=True)
    assert (old.cpu_workers, old.cpu_worker_cpus, old.model_workers, old.model_worker_cpus) == (1, 1.0, 1, 1.0)


def test_auto_with_gpus_gives_each_model_worker_a_gpu_share_and_the_rest_of_the_cores_to_cpu_workers():
    sizes = pool_sizes(ray_cfg(), cpus=32, gpus=4, local=False)
    assert (sizes.model_workers, sizes.model_worker_gpus, sizes.cpu_workers) == (4, 1.0, 28)
    shared = pool_sizes(ray_cfg("model_worker_gpus=0.5"), cpus=32, gpus=4, local=False)
    assert (shared.model_workers, shared.cpu_workers) == (8, 24)
    assert shared.demand() == (32.0, 4.0)


def test_explicit_sizes_are_kept():
    sizes = pool_sizes(ray_cfg("cpu_workers=1", "cpu_worker_cpus=0.5", "model_workers=2", "model_worker_cpus=0.75",
                               "model_worker_gpus=0"), cpus=2, gpus=0, local=True)
    assert sizes.as_dict() == {"cpu_workers": 1, "cpu_worker_cpus": 0.5, "model_workers": 2,
                               "model_worker_cpus": 0.75, "model_worker_gpus": 0.0}


def test_actors_that_do_not_fit_are_an_error_on_a_local_ray_and_a_warning_on_a_cluster(caplog):
    too_many = ray_cfg("model_workers=4", "model_worker_cpus=1", "cpu_worker_cpus=1")
    with pytest.raises(SizingError, match="ask for 5 CPUs and 0 GPUs but the cluster has 2"):
        pool_sizes(too_many, cpus=2, gpus=0, local=True)
    sizes = pool_sizes(too_many, cpus=2, gpus=0, local=False)  # an autoscaler may add nodes
    assert sizes.model_workers == 4 and "start when the cluster grows" in caplog.text
    with pytest.raises(SizingError, match="GPUs"):
        pool_sizes(ray_cfg("model_worker_gpus=1", "model_workers=2"), cpus=8, gpus=1, local=True)
    with pytest.raises(SizingError, match="cpu_worker_cpus"):
        pool_sizes(ray_cfg("cpu_worker_cpus=0"), cpus=8, gpus=0, local=True)


def test_several_nodes_are_sized_from_what_each_holds():
    """Two 1-CPU nodes: sized from the total (2 CPUs) the pools were two model actors of 0.8 CPU and
    a CPU actor of 0.4 that fit on neither node; sized per node, each holds one of each."""
    two = [NodeCapacity(1.0), NodeCapacity(1.0)]
    from_total = pool_sizes(ray_cfg(), cpus=2, gpus=0, local=False)
    assert (from_total.cpu_workers, from_total.cpu_worker_cpus, from_total.model_worker_cpus) == (1, 0.4, 0.8)
    assert not packs(from_total, two)
    sizes = cluster_pool_sizes(ray_cfg(), two, local=False)
    assert sizes == PoolSizes(2, 0.2, 2, 0.8, 0.0) and packs(sizes, two)
    assert cluster_pool_sizes(ray_cfg("model_workers=1"), two, local=False) == PoolSizes(2, 0.2, 1, 0.8, 0.0)
    # one node is sized as a whole, as before
    assert cluster_pool_sizes(ray_cfg(), [NodeCapacity(2.0)], local=True) == from_total
    # a GPU node and a CPU-only node: model actors on the GPU, CPU actors on every free core
    mixed = cluster_pool_sizes(ray_cfg(), [NodeCapacity(8.0, 1.0), NodeCapacity(16.0)], local=False)
    assert mixed == PoolSizes(23, 1.0, 1, 1.0, 1.0)


def test_actors_that_pack_into_no_node_are_an_error_on_a_fixed_cluster(caplog):
    two = [NodeCapacity(1.0), NodeCapacity(1.0)]
    with pytest.raises(SizingError, match="do not pack into the nodes"):
        cluster_pool_sizes(ray_cfg("cpu_worker_cpus=0.5", "model_worker_cpus=0.8", "model_workers=2"), two,
                           local=True)
    cluster_pool_sizes(ray_cfg("cpu_worker_cpus=0.5", "model_worker_cpus=0.8", "model_workers=2"), two, local=False)
    assert "do not pack into the nodes" in caplog.text
