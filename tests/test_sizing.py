"""Actor pool sizing from the config and the cluster's resources (pipeline.sizing)."""
from __future__ import annotations

import pytest

from configs import load_config
from pipeline.sizing import SizingError, pool_sizes


def ray_cfg(*overrides: str):
    return load_config("pipeline", [f"ray.{o}" for o in overrides]).ray


def test_auto_on_cpus_only_keeps_a_core_in_eight_for_decoding_and_faces():
    sizes = pool_sizes(ray_cfg(), cpus=16, gpus=0, local=True)
    assert (sizes.cpu_workers, sizes.model_workers, sizes.model_worker_gpus) == (2, 14, 0.0)
    assert sizes.demand() == (16.0, 0.0)
    two = pool_sizes(ray_cfg(), cpus=2, gpus=0, local=True)
    assert (two.cpu_workers, two.model_workers) == (1, 1)
    # every model lives in each model actor: memory caps their number on a CPU-only machine
    assert pool_sizes(ray_cfg(), cpus=16, gpus=0, local=True, memory_gb=20).model_workers == 6
    assert pool_sizes(ray_cfg(), cpus=16, gpus=0, local=True, memory_gb=2).model_workers == 1
    assert pool_sizes(ray_cfg(), cpus=32, gpus=4, local=True, memory_gb=20).model_workers == 4  # on GPUs


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
    too_many = ray_cfg("model_workers=4")
    with pytest.raises(SizingError, match="ask for 5 CPUs and 0 GPUs but the cluster has 2"):
        pool_sizes(too_many, cpus=2, gpus=0, local=True)
    sizes = pool_sizes(too_many, cpus=2, gpus=0, local=False)  # an autoscaler may add nodes
    assert sizes.model_workers == 4 and "start when the cluster grows" in caplog.text
    with pytest.raises(SizingError, match="GPUs"):
        pool_sizes(ray_cfg("model_worker_gpus=1", "model_workers=2"), cpus=8, gpus=1, local=True)
    with pytest.raises(SizingError, match="cpu_worker_cpus"):
        pool_sizes(ray_cfg("cpu_worker_cpus=0"), cpus=8, gpus=0, local=True)
