"""Stop exactly the Ray processes a test started, found by the session folder it gave them.

``ray stop`` kills every Ray process of the user on the machine, including other people's
clusters; a test must only end its own. Every process of a Ray session (GCS, raylet, dashboard,
agents, workers) carries its temp folder on its command line, so that folder names them.
"""
from __future__ import annotations

import psutil


def _belongs(proc: psutil.Process, temp_dir: str) -> bool:
    """True when the process names ``temp_dir`` on its command line or holds a file open below it
    (workers and agents rename themselves, ``ray::IDLE``, but keep their session's logs open)."""
    if any(temp_dir in part for part in proc.info["cmdline"] or ()):
        return True
    return any(f.path.startswith(temp_dir) for f in proc.open_files())


def session_processes(temp_dir: str) -> list[psutil.Process]:
    """Every live process of the Ray session rooted at ``temp_dir``, with its descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if _belongs(proc, temp_dir):
                found[proc.pid] = proc
                found.update((child.pid, child) for child in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return list(found.values())


def kill_session_processes(temp_dir: str, timeout_s: float = 3.0) -> int:
    """Terminate (then kill) every process whose command line names ``temp_dir``; returns how many."""
    procs = session_processes(temp_dir)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)
    return len(procs)
