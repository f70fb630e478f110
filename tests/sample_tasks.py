"""Engine tasks used by the engine tests (loaded like a plugin's task module)."""

import time

from engine.errors import UserError
from engine.tasks import JobContext, task


@task("sample.steps", queue="gpu")
def steps(job: JobContext, n: int, delay: float = 0.0) -> dict:
    for i in range(1, n + 1):
        time.sleep(delay)
        job.progress(i, n, message=f"step {i}", snapshot=b"snap%d" % i if i == n else None)
    return {"done": n, "attempt": job.attempt}


@task("sample.fail", queue="io")
def fail(job: JobContext, kind: str) -> None:
    if kind == "user":
        raise UserError("That prompt is too long (max 300 characters).")
    raise RuntimeError("internal detail that users must not see")


@task("sample.consume", queue="gpu", inputs=("image", "extra"))
def consume(job: JobContext, image: str, extra: list[str], snapshot: bool = False) -> dict:
    size = len(job.blobs.get(image)) + sum(len(job.blobs.get(k)) for k in extra)
    if snapshot:
        job.progress(1, 1, snapshot=b"s" * size)
    return {"size": size}


@task("sample.die", queue="gpu")
def die(job: JobContext) -> None:
    """A job that kills the process running it, every time (a poison job)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@task("sample.threads", queue="gpu")
def threads(job: JobContext) -> dict:
    import torch

    return {"torch": torch.get_num_threads(), "pid": __import__("os").getpid()}


@task("sample.tally", queue="gpu")
def tally(job: JobContext, path: str, n: int, delay: float = 0.0) -> dict:
    """`sample.steps` with a side effect a test can count: each run appends a line to `path`."""
    with open(path, "a") as runs:
        runs.write(f"attempt {job.attempt}\n")
    return steps(job, n, delay)

