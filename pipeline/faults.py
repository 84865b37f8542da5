"""Which failures are the infrastructure's, not the clip's: those are retried, never a verdict.

A clip is rejected only for what its content is (unreadable or broken media, no face, a score past
a threshold). A worker or node that dies, an object lost with its node, memory that runs out (a
GPU shared with another job), a storage or network error and a call that times out say nothing
about the clip: ``transient_kind`` names such a failure with a short kind (``worker_died``,
``actor_unavailable``, ``node_died``, ``object_lost``, ``out_of_memory``, ``storage``,
``network``, ``timeout``), and the scheduler retries the item; whatever still fails is recorded
as retryable and redone by the next run (``pipeline.incomplete``). Anything else is a content
verdict or a bug, and stays a rejection.

The media readers wrap what they meet in ``MediaError`` with a reason; a timeout reason, or a
network or storage error underneath (``__cause__``), is transient too.
"""
from __future__ import annotations

import errno
import socket

from ray import exceptions as rx

TRANSIENT_ERRNOS = {errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.ESTALE, errno.EAGAIN, errno.EBUSY,
                    errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
                    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.ENOMEM}
# Text of errors raised as plain RuntimeError/OSError by torch and by pyarrow's remote filesystems.
OOM_TEXT = ("CUDA out of memory", "CUDA error: out of memory", "can't allocate memory",
            "HIP out of memory", "out of memory")
NETWORK_TEXT = ("AWS Error NETWORK", "Couldn't connect", "curl error", "Connection reset", "Connection refused",
                "Could not resolve host", "Timeout was reached", "SlowDown", "SLOW_DOWN", "response code: 503",
                "ServiceUnavailable", "SERVICE_UNAVAILABLE", "InternalError", "RequestTimeout", "Broken pipe")
# What a file's own path or rights answer: never retried, whatever words its message holds.
CONTENT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EINVAL}
MEDIA_TIMEOUT_REASONS = {"timeout"}


class TransientError(Exception):
    """An infrastructure failure a stage re-raises so the scheduler retries the item."""

    def __init__(self, kind: str, message: str):
        super().__init__(kind, message)  # both in args, so it pickles across Ray
        self.kind, self.message = kind, message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def raise_if_transient(exc: BaseException) -> None:
    """Raise ``exc`` again as a ``TransientError`` when it is the infrastructure's; a stage calls
    this before turning an exception into a rejection."""
    kind = transient_kind(exc)
    if kind is not None:
        raise TransientError(kind, f"{type(exc).__name__}: {exc}"[:2000]) from exc


def _ray_kind(exc: BaseException) -> str | None:
    if isinstance(exc, rx.ActorUnavailableError):
        return "actor_unavailable"
    if isinstance(exc, (rx.RayActorError, rx.WorkerCrashedError, rx.LocalRayletDiedError)):
        return "worker_died"
    if isinstance(exc, rx.NodeDiedError):
        return "node_died"
    if isinstance(exc, rx.ObjectLostError):
        return "object_lost"
    if isinstance(exc, (rx.OutOfMemoryError, rx.ObjectStoreFullError)):
        return "out_of_memory"
    if isinstance(exc, rx.OutOfDiskError):
        return "storage"
    if isinstance(exc, (rx.GetTimeoutError, rx.ObjectFetchTimedOutError)):
        return "timeout"
    if isinstance(exc, (rx.RaySystemError, rx.RpcError)):
        return "network"
    return None


def _own_kind(exc: BaseException) -> str | None:
    """The kind of ``exc`` itself, without looking at its causes."""
    if isinstance(exc, TransientError):
        return exc.kind
    if isinstance(exc, rx.RayTaskError):
        return None  # decided by its cause
    if isinstance(exc, rx.RayError):
        return _ray_kind(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda's too
        return "out_of_memory"
    if isinstance(exc, RuntimeError) and any(t in str(exc) for t in OOM_TEXT):
        return "out_of_memory"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (ConnectionError, socket.gaierror, socket.herror)):
        return "network"
    if isinstance(exc, OSError):
        if type(exc).__module__.startswith("av."):  # FFmpeg's verdict on the file's bytes
            return None
        if exc.errno in TRANSIENT_ERRNOS:
            return "storage"
        if exc.errno in CONTENT_ERRNOS:  # a path like video_503.mp4 must not read as a 503
            return None
        if any(t in str(exc) for t in NETWORK_TEXT):
            return "network"
        return None
    reason = getattr(exc, "reason", None)  # pipeline.probe.MediaError and its DecodeError
    if isinstance(reason, str) and reason in MEDIA_TIMEOUT_REASONS and hasattr(exc, "message"):
        return "timeout"
    return None


def transient_kind(exc: BaseException) -> str | None:
    """The infrastructure failure ``exc`` stands for, or None for a content verdict or a bug.

    Looks through Ray's task errors (``RayTaskError.cause``) and explicit causes (``raise ...
    from``), so a network error a media reader wrapped is still found."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = _own_kind(current)
        if kind is not None:
            return kind
        if isinstance(current, rx.RayTaskError) and current.cause is not None and current.cause is not current:
            current = current.cause
        else:
            current = current.__cause__
    return None
