"""The example plugin's engine task: only workers import this module."""

from engine.tasks import JobContext, task


@task("hello.shout", queue="io")
def shout(job: JobContext, text: str, times: int) -> dict:
    job.progress(1, 1, message="shouting")
    return {"text": " ".join([text.upper() + "!"] * times)}
