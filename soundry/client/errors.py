"""Typed errors of the Python client; each carries the server's error code and sentence."""

from __future__ import annotations


class SoundryError(Exception):
    """Any error answer from the server (``code`` is its first error code, ``status`` the HTTP status)."""

    def __init__(self, description: str, code: str = "error", status: int = 0, retry_after: float | None = None):
        super().__init__(f"{code}: {description}" if code else description)
        self.description, self.code, self.status, self.retry_after = description, code, status, retry_after


class AuthenticationError(SoundryError):
    """401: bad credentials or an expired, revoked or malformed token."""


class NotFoundError(SoundryError):
    """404: no such task (or not yours), route or file."""


class InvalidRequestError(SoundryError):
    """400/413/422: the request was refused; ``description`` names the field."""


class ConflictError(SoundryError):
    """409: e.g. canceling a task that already finished."""


class RateLimitedError(SoundryError):
    """429: too many requests or tasks; ``retry_after`` says when to try again."""


class ServerUnavailableError(SoundryError):
    """503 or a connection failure: try again later (``retry_after`` when the server said)."""


class ServerError(SoundryError):
    """500 and other unexpected answers."""


class TaskFailedError(SoundryError):
    """The task ended FAILED; ``description`` is the server's reason."""


class TaskCanceledError(SoundryError):
    """The task was canceled before it finished."""


_BY_STATUS = {401: AuthenticationError, 403: AuthenticationError, 404: NotFoundError, 400: InvalidRequestError,
              413: InvalidRequestError, 422: InvalidRequestError, 409: ConflictError, 429: RateLimitedError,
              503: ServerUnavailableError}


def error_for(status: int, code: str, description: str, retry_after: float | None = None) -> SoundryError:
    cls = _BY_STATUS.get(status, ServerError)
    return cls(description, code, status, retry_after)
