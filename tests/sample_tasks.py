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
