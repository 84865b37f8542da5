"""How many CPU and model actors to start, and what each asks of Ray, from the config and the
cluster's resources.

Every ``ray.*`` sizing key may be a number or ``auto``:

* ``model_worker_gpus: auto``: one whole GPU per model actor when the cluster has GPUs, else none
  (the models then run on the CPU);
* ``model_workers: auto``: with GPUs, as many as the GPUs hold at that share; on CPUs only, one per
  ``model_worker_cpus`` of the cores the CPU actors leave, and no more than the memory Ray offers
  holds at ``model_worker_memory_gb`` each (every model of the pipeline lives in each actor);
* ``cpu_workers: auto``: with GPUs, every core the model actors leave (the GPUs outrun the
  decoding and face tracking, so the CPU side is the bottleneck); on CPUs only, one per 8 cores
  (there the CPU stages cost about an eighth of the models' time, bench/pipeline.py).

Actors that do not fit wait for resources: forever on a local Ray, which is an error here, and
until the autoscaler adds nodes on a cluster, which is only worth a warning.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

log = logging.getLogger(__name__)

AUTO = "auto"
CORES_PER_CPU_WORKER = 8  # CPU-only clusters: one CPU actor per this many cores


class SizingError(ValueError):
    """The actor pools cannot be sized as configured on this cluster."""


@dataclass(frozen=True)
class PoolSizes:
    cpu_workers: int
    cpu_worker_cpus: float
    model_workers: int
    model_worker_cpus: float
    model_worker_gpus: float

    def demand(self) -> tuple[float, float]:
        """(CPUs, GPUs) the actors ask of Ray together."""
        return (self.cpu_workers * self.cpu_worker_cpus + self.model_workers * self.model_worker_cpus,
                self.model_workers * self.model_worker_gpus)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _given(value: Any) -> bool:
    """True for a number, False for ``auto``."""
    return str(value) != AUTO


def pool_sizes(ray_cfg: Mapping[str, Any], cpus: float, gpus: float, local: bool,
               memory_gb: float | None = None) -> PoolSizes:
    """Resolve the ``auto`` keys of ``ray_cfg`` for a cluster of ``cpus`` CPUs, ``gpus`` GPUs and
    ``memory_gb`` of memory for actors (None: not limited)."""
    cpu_each, model_cpus = float(ray_cfg["cpu_worker_cpus"]), float(ray_cfg["model_worker_cpus"])
    if cpu_each <= 0 or model_cpus < 0:
        raise SizingError(f"ray.cpu_worker_cpus must be > 0 and ray.model_worker_cpus >= 0, got "
                         f"{cpu_each} and {model_cpus}")
    gpu_each = float(ray_cfg["model_worker_gpus"]) if _given(ray_cfg["model_worker_gpus"]) else (1.0 if gpus >= 1 else 0.0)
    cpu_workers = int(ray_cfg["cpu_workers"]) if _given(ray_cfg["cpu_workers"]) else None
    model_workers = int(ray_cfg["model_workers"]) if _given(ray_cfg["model_workers"]) else None

    if gpu_each > 0:
        if model_workers is None:
            model_workers = max(1, math.floor(gpus / gpu_each + 1e-9))
        if cpu_workers is None:
            cpu_workers = max(1, math.floor((cpus - model_workers * model_cpus) / cpu_each + 1e-9))
    else:
        if cpu_workers is None:
            cpu_workers = max(1, round(cpus / CORES_PER_CPU_WORKER))
        if model_workers is None:
            left = cpus - cpu_workers * cpu_each
            model_workers = max(1, math.floor(left / model_cpus + 1e-9)) if model_cpus > 0 else 1
            if memory_gb is not None:
                fit = math.floor(memory_gb / float(ray_cfg["model_worker_memory_gb"]))
                if fit < model_workers:
                    log.info("%.0f GB of memory holds %d model workers of %g GB, not the %d the cores allow",
                             memory_gb, fit, float(ray_cfg["model_worker_memory_gb"]), model_workers)
                    model_workers = max(1, fit)
    if cpu_workers < 1 or model_workers < 1:
        raise SizingError(f"need at least one CPU and one model worker, got {cpu_workers} and {model_workers}")

    sizes = PoolSizes(cpu_workers, cpu_each, model_workers, model_cpus, gpu_each)
    want_cpus, want_gpus = sizes.demand()
    if want_cpus > cpus + 1e-9 or want_gpus > gpus + 1e-9:
        message = (f"the actors ask for {want_cpus:g} CPUs and {want_gpus:g} GPUs but the cluster has "
                   f"{cpus:g} and {gpus:g} ({sizes.as_dict()}); lower ray.cpu_workers / ray.model_workers "
                   f"or their shares, or set them to auto")
        if local:
            raise SizingError(message + ": on a local Ray the rest would wait forever")
        log.warning("%s; the actors that do not fit start when the cluster grows", message)
    return sizes
