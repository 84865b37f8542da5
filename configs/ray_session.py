"""Start or join Ray as the ``ray`` config section says: an address joins that cluster, none starts a new one.

``ray.init()`` without an address does not start a fresh local Ray: it first joins the cluster the
machine last recorded (``ray_current_cluster`` under Ray's temp folder, written by ``ray start``),
even one that has since died, and then retries the dead address for minutes (about 40 s per try,
20 tries) without answering SIGTERM. So here:

- no address (neither given nor in ``RAY_ADDRESS``): ``ray.init(address="local")``, a new local
  instance that ignores any record;
- an address (``host:port``, ``ray://host:port``, or ``auto`` for the recorded/running one): its
  port must accept a connection within ``connect_timeout_s`` (retried until then, for a head that
  is still starting), else :class:`RayAddressError` naming the address. A port that accepts but
  then does not behave as a Ray GCS is left to Ray's own timeouts.

Used by the shard job and by ``training.run --num-workers``; Ray is imported only when called.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any

ADDRESS_ENV = "RAY_ADDRESS"
DEFAULT_CONNECT_TIMEOUT_S = 30.0
RETRY_PAUSE_S = 0.5


class RayAddressError(ValueError):
    """A Ray address that leads to no cluster; the message is one line naming the address."""


def address_from_environment() -> str | None:
    """``RAY_ADDRESS`` when set and not empty (``ray job submit`` sets it for its driver)."""
    return os.environ.get(ADDRESS_ENV) or None


def host_and_port(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``ray://host:port`` -> (host, port); ``auto`` is resolved the
    way ``ray.init`` resolves it (``RAY_ADDRESS``, the recorded cluster, a running one)."""
    text = address.strip()
    if text == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            text = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as exc:
            raise RayAddressError(f"ray address 'auto' finds no running Ray cluster: {str(exc).splitlines()[0]}") from exc
    text = text.split("://", 1)[1] if "://" in text else text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayAddressError(f"ray address {address!r} is not host:port, ray://host:port or auto")
    return host.strip("[]"), int(port)


def wait_for_cluster(address: str, timeout_s: float, source: str) -> None:
    """Return once ``address``'s port accepts a TCP connection; RayAddressError after ``timeout_s``."""
    host, port = host_and_port(address)
    shown = f"auto = {host}:{port}" if address.strip() == "auto" else address
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(remaining, 5.0))):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if time.monotonic() + RETRY_PAUSE_S >= deadline:
            raise RayAddressError(
                f"no Ray cluster answers at {shown} ({source}) within {timeout_s:g} s ({reason}); "
                f"check the address, or give none to start a local Ray")
        time.sleep(RETRY_PAUSE_S)


def join_cluster(address: str | None, timeout_s: float, source: str, **init_kwargs: Any) -> None:
    """``ray.init`` on a cluster that answers; ``address=None`` lets Ray take ``RAY_ADDRESS`` (which
    ``source`` names), so a job driver keeps the working directory ``ray job submit`` gave it."""
    import ray

    target = address or address_from_environment()
    if not target:
        raise RayAddressError(f"no Ray address given ({source})")
    wait_for_cluster(target, timeout_s, source)
    try:
        ray.init(address=address, **init_kwargs)
    except ConnectionError as exc:
        raise RayAddressError(f"cannot join the Ray cluster at {target} ({source}): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def start_local(**init_kwargs: Any) -> None:
    """A new local Ray owned by this process, whatever cluster the machine last recorded."""
    import ray

    ray.init(address="local", **init_kwargs)
