"""A long-queue task for the fair-share tests (the /imagine plugin declares `gpu-long`; the engine
unit tests, which load tests/sample_tasks.py on the core queues alone, do not load this one)."""

import time

from engine.tasks import JobContext, task


@task("sample.turn", queue="gpu-long")
def turn(job: JobContext, path: str, name: str, seconds: float = 0.2) -> dict:
    """A long job that notes when it starts (a line `NAME START_TIME` in `path`), then sleeps."""
    with open(path, "a") as starts:
        starts.write(f"{name} {time.time()!r}\n")
    time.sleep(seconds)
    return {"name": name}
