"""Worker health, shared by the submitting side (`engine.app`: is a worker online?) and the
workers (`engine.worker`: heartbeats, replacing hung children, reaping dead workers' jobs).

Only names and timings live here, so neither side imports the other: every process that runs
jobs announces itself in the WORKERS hash, each worker's main process in NODES, and RUNNING
says which process runs which job.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.settings import EngineSettings

WORKERS = "clipbot:workers"  # hash: "node/pid" of each process that runs jobs -> its heartbeat
NODES = "clipbot:nodes"  # hash: node name -> the worker main process's heartbeat
RUNNING = "clipbot:running"  # hash: job id -> "node/pid" of the process running it
REAPER = "clipbot:reaper"  # lock: one reaper per round across all workers
FORGET_AFTER = 3600.0  # announcements of processes gone this long are deleted


def heartbeat_every(settings: "EngineSettings") -> float:
    return min(5.0, settings.worker_dead_after / 4)


def stale_after(settings: "EngineSettings") -> float:
    """A process whose last heartbeat is older than this is not advertised as a worker."""
    return min(20.0, settings.worker_dead_after)


def gave_up_message(job_id: str, attempts: int) -> str:
    return (f"This job stopped the worker running it {attempts} times, so I gave up on it. It may be too big "
            f"for the worker: try something smaller, or ask an admin to check the worker logs (job {job_id[:8]}).")


def load_table(table: dict) -> dict[str, dict]:
    """A heartbeat hash as read from Redis (bytes keys, JSON values) as plain dicts."""
    return {k.decode() if isinstance(k, bytes) else k: json.loads(v) for k, v in table.items()}
