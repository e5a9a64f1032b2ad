"""The Python client (SDK) for a soundry server."""

from soundry.client.client import Audio, Client, Task
from soundry.client.errors import (
                                   AuthenticationError,
                                   ConflictError,
                                   InvalidRequestError,
                                   NotFoundError,
                                   RateLimitedError,
                                   ServerError,
                                   ServerUnavailableError,
                                   SoundryError,
                                   TaskCanceledError,
                                   TaskFailedError,
)

__all__ = ["Audio", "AuthenticationError", "Client", "ConflictError", "InvalidRequestError", "NotFoundError",
           "RateLimitedError", "ServerError", "ServerUnavailableError", "SoundryError", "Task",
           "TaskCanceledError", "TaskFailedError"]
