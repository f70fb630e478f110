"""Errors that cross from the engine to people: their message is shown to the user as is."""

from __future__ import annotations


class UserError(Exception):
    """An error whose message is written for the person who made the request."""


class ImageRejected(UserError):
    """The uploaded file is not an image we accept (format, size, pixels, corrupt)."""


class ModelUnavailable(UserError):
    """A configured model cannot be loaded or downloaded; the message says what to do."""


class WorkerUnavailable(UserError):
    """No worker is online to run the job, or it stopped answering."""


class JobFailed(UserError):
    """A job ended in failure; the message is safe to show."""


class JobCancelled(UserError):
    """The job was cancelled before it finished."""


class BackendUnavailable(WorkerUnavailable):
    """Redis (the job queue and shared state) cannot be reached."""

    def __init__(self, where: str, reason: object = "") -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(f"I can't reach Redis at {where}{why}, so jobs can't run right now. "
                         "Check that Redis is running, or ask an admin.")
        self.where = where
