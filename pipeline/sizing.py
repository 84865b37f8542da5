"""How many CPU and model actors to start, and what each asks of Ray, from the config and the
cluster's resources.

Every ``ray.*`` sizing key may be a number or ``auto``. With GPUs:

* ``model_worker_gpus: auto``: one whole GPU per model actor (none when the cluster has no GPU:
  the models then run on the CPU);
* ``model_workers: auto``: as many as the GPUs hold at that share, one CPU each
  (``model_worker_cpus: auto`` = 1);
* ``cpu_workers: auto``: every core the model actors leave, one each (``cpu_worker_cpus: auto`` =
  1): the GPUs outrun decoding and face tracking, so the CPU side is the bottleneck.

On CPUs only the models are most of the work and every core should run one: a share ``f`` of the
single-thread work (``ray.cpu_stage_share``, measured by bench/pipeline.py and logged by every run,
``pipeline.activity``) is the CPU stages', the rest the models'. So:

* ``model_workers: auto``: one per ``torch_threads`` cores, and no more than the memory Ray offers
  holds at ``model_worker_memory_gb`` each (every model of the pipeline lives in each actor);
* ``cpu_workers: auto``: ``ceil(CPU_ACTOR_HEADROOM * cores * f / (1 - f))``. The CPU actors
  time-share the cores with the model actors; while all of them run, the CPU stages get K of
  every K + cores time slices, so K >= cores * f / (1 - f) keeps the crops coming as fast as the
  models take them, and the headroom lets them run ahead (``ray.max_prepared_clips`` bounds how
  far), to idle, not the models, when they are early;
* ``cpu_worker_cpus: auto``: the cores the CPU stages use on average, ``cores * f``, split over the
  CPU actors; ``model_worker_cpus: auto``: what that leaves, split over the model actors. These are
  only Ray's bookkeeping (Ray places actors by them and never limits a process to its share): they
  add up to the cores, so a local Ray fits every actor and a cluster's nodes are shared out evenly.

On a cluster of several nodes the ``auto`` shares come from what each node holds, not from the
total (``cluster_pool_sizes``): every node is sized as above on its own cores and GPUs, the pools
take the smallest share any node gave and the sum of the counts, and the actors are checked to
pack into the nodes (largest first, as Ray places them). Sized from the total, two 1-CPU nodes
got two model actors of 0.8 CPU, one per node, and a CPU actor of 0.4 that fit neither.

Actors that do not fit wait for resources: forever on a local Ray, which is an error here, and
until the autoscaler adds nodes on a cluster, which is only worth a warning; an actor pool still
not up after ``ray.placement_timeout_s`` stops the run (``pipeline.scheduler``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

log = logging.getLogger(__name__)

AUTO = "auto"
CPU_ACTOR_HEADROOM = 1.25  # CPU-only: CPU actors for this many times the CPU stages' share
RESOURCE_STEP = 1e-4       # Ray's resolution for fractional resources


class SizingError(ValueError):
    """The actor pools cannot be sized as configured on this cluster."""


@dataclass(frozen=True)
class NodeCapacity:
    """What one node offers Ray's actors."""

    cpus: float
    gpus: float = 0.0
    memory_gb: float | None = None

    @classmethod
    def of(cls, resources: Mapping[str, float]) -> "NodeCapacity":
        """From a node's resources as ``ray.nodes()`` lists them."""
        memory = resources.get("memory")
        return cls(float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0)),
                   None if memory is None else float(memory) / 2**30)


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


def _share(value: float) -> float:
    """A fractional resource rounded down to Ray's resolution (so shares never add up past the total)."""
    return max(RESOURCE_STEP, math.floor(value / RESOURCE_STEP + 1e-6) * RESOURCE_STEP)


def pool_sizes(ray_cfg: Mapping[str, Any], cpus: float, gpus: float, local: bool,
               memory_gb: float | None = None) -> PoolSizes:
    """Resolve the ``auto`` keys of ``ray_cfg`` for a cluster of ``cpus`` CPUs, ``gpus`` GPUs and
    ``memory_gb`` of memory for actors (None: not limited)."""
    cpu_each = float(ray_cfg["cpu_worker_cpus"]) if _given(ray_cfg["cpu_worker_cpus"]) else None
    model_cpus = float(ray_cfg["model_worker_cpus"]) if _given(ray_cfg["model_worker_cpus"]) else None
    if (cpu_each is not None and cpu_each <= 0) or (model_cpus is not None and model_cpus < 0):
        raise SizingError(f"ray.cpu_worker_cpus must be > 0 and ray.model_worker_cpus >= 0, got "
                          f"{cpu_each} and {model_cpus}")
    gpu_each = float(ray_cfg["model_worker_gpus"]) if _given(ray_cfg["model_worker_gpus"]) else (1.0 if gpus >= 1 else 0.0)
    cpu_workers = int(ray_cfg["cpu_workers"]) if _given(ray_cfg["cpu_workers"]) else None
    model_workers = int(ray_cfg["model_workers"]) if _given(ray_cfg["model_workers"]) else None

    if gpu_each > 0:
        cpu_each = 1.0 if cpu_each is None else cpu_each
        model_cpus = 1.0 if model_cpus is None else model_cpus
        if model_workers is None:
            model_workers = max(1, math.floor(gpus / gpu_each + 1e-9))
        if cpu_workers is None:
            cpu_workers = max(1, math.floor((cpus - model_workers * model_cpus) / cpu_each + 1e-9))
    else:
        share = float(ray_cfg["cpu_stage_share"])
        if not 0 < share < 1:
            raise SizingError(f"ray.cpu_stage_share must be between 0 and 1, got {share}")
        if cpu_workers is None:
            cpu_workers = max(1, math.ceil(CPU_ACTOR_HEADROOM * cpus * share / (1 - share) - 1e-9))
        if cpu_each is None:
            cpu_each = min(1.0, _share(cpus * share / max(cpu_workers, 1)))
        left = cpus - cpu_workers * cpu_each
        per_core = max(1, math.floor(cpus / max(1, int(ray_cfg["torch_threads"])) + 1e-9))
        if model_cpus is None:
            if left <= 0:
                raise SizingError(f"{cpu_workers} CPU workers of {cpu_each:g} CPUs take all {cpus:g} CPUs: "
                                  f"lower ray.cpu_workers or ray.cpu_worker_cpus")
            model_cpus = _share(left / (model_workers or per_core))
        if model_workers is None:
            # one per core; with a given share, as many as the CPUs left hold at it
            model_workers = max(1, math.floor(left / model_cpus + 1e-9)) if model_cpus > 0 else per_core
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


def _node_counts(ray_cfg: Mapping[str, Any], node: NodeCapacity, gpu_each: float) -> PoolSizes | None:
    """The ``auto`` sizing of one node on its own (None: the node hosts no actor)."""
    per_node = {**ray_cfg, "cpu_workers": AUTO, "model_workers": AUTO, "model_worker_gpus": gpu_each}
    if gpu_each > 0:
        cpu_each = float(ray_cfg["cpu_worker_cpus"]) if _given(ray_cfg["cpu_worker_cpus"]) else 1.0
        model_cpus = float(ray_cfg["model_worker_cpus"]) if _given(ray_cfg["model_worker_cpus"]) else 1.0
        models = math.floor(node.gpus / gpu_each + 1e-9)
        cpus = max(0, math.floor((node.cpus - models * model_cpus) / cpu_each + 1e-9))
        return PoolSizes(cpus, cpu_each, models, model_cpus, gpu_each) if cpus or models else None
    if node.cpus <= 0:
        return None
    try:
        return pool_sizes(per_node, node.cpus, 0.0, local=False, memory_gb=node.memory_gb)
    except SizingError:
        return None


def packs(sizes: PoolSizes, nodes: list[NodeCapacity]) -> bool:
    """True when every actor fits on some node, placed largest first on the first node with room."""
    room = [[n.cpus, n.gpus] for n in sorted(nodes, key=lambda n: (-n.gpus, -n.cpus))]
    actors = ([(sizes.model_worker_cpus, sizes.model_worker_gpus)] * sizes.model_workers
              + [(sizes.cpu_worker_cpus, 0.0)] * sizes.cpu_workers)
    for cpu, gpu in sorted(actors, key=lambda a: (-a[1], -a[0])):
        node = next((r for r in room if r[0] + 1e-9 >= cpu and r[1] + 1e-9 >= gpu), None)
        if node is None:
            return False
        node[0] -= cpu
        node[1] -= gpu
    return True


def cluster_pool_sizes(ray_cfg: Mapping[str, Any], nodes: list[NodeCapacity], local: bool) -> PoolSizes:
    """``pool_sizes`` for a cluster of these nodes: one node is sized as a whole; several are each
    sized on their own, the pools taking the smallest share and the sum of the counts (a count
    given in the config is kept). Raises ``SizingError`` when the actors cannot pack into the
    nodes on a fixed (local) cluster, and warns on one that may grow."""
    nodes = [n for n in nodes if n.cpus > 0 or n.gpus > 0]
    if not nodes:
        raise SizingError("the cluster has no node with CPUs or GPUs")
    cpus, gpus = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
    memory = None if any(n.memory_gb is None for n in nodes) else sum(n.memory_gb for n in nodes)
    if len(nodes) == 1:
        sizes = pool_sizes(ray_cfg, cpus, gpus, local, memory)
    else:
        gpu_each = (float(ray_cfg["model_worker_gpus"]) if _given(ray_cfg["model_worker_gpus"])
                    else (1.0 if any(n.gpus >= 1 for n in nodes) else 0.0))
        plans = [p for p in (_node_counts(ray_cfg, n, gpu_each) for n in nodes) if p is not None]
        with_cpu = [p for p in plans if p.cpu_workers] or plans
        with_model = [p for p in plans if p.model_workers] or plans
        if not plans:
            raise SizingError(f"no node of {nodes} can hold a CPU and a model actor")

        def count(key: str, planned: int) -> int:
            return int(ray_cfg[key]) if _given(ray_cfg[key]) else max(1, planned)

        sizes = PoolSizes(count("cpu_workers", sum(p.cpu_workers for p in plans)),
                          min(p.cpu_worker_cpus for p in with_cpu),
                          count("model_workers", sum(p.model_workers for p in plans)),
                          min(p.model_worker_cpus for p in with_model), gpu_each)
        log.info("sized from %d nodes (%s)", len(nodes),
                 ", ".join(f"{n.cpus:g} CPU {n.gpus:g} GPU" for n in nodes))
    if not packs(sizes, nodes):
        message = (f"the actors ({sizes.as_dict()}) do not pack into the nodes "
                   f"({', '.join(f'{n.cpus:g} CPU {n.gpus:g} GPU' for n in nodes)})")
        if local:
            raise SizingError(message + "; lower ray.cpu_workers / ray.model_workers or their shares")
        log.warning("%s; those that do not fit wait for the cluster to grow (ray.placement_timeout_s)", message)
    return sizes
