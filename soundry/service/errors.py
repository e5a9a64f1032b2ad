"""The service's refusals: one exception type carrying what every wire API needs to answer in its own shape."""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal: an HTTP status, a machine-readable code, a sentence a person can act on, and the input it
    refuses (``field``, in the service's naming: ``prompt``, ``negative_prompt``, ``webhook``,
    ``configs.<key>``) with the sentence without the field (``message``). Wire APIs rename the field into
    their own (``configs.cfg_coef`` is Replicate's ``classifier_free_guidance``, ElevenLabs' ``prompt`` its
    ``text``) and keep the status: the same refusal answers the same status on every API."""

    def __init__(self, status: int, code: str, description: str, headers: dict | None = None,
                 field: str | None = None, message: str | None = None):
        super().__init__(description)
        self.status, self.code, self.description, self.headers = status, code, description, headers
        self.field, self.message = field, message if message is not None else description

    def described(self, rename) -> str:
        """The sentence with the field as ``rename(field)`` names it."""
        return f"{rename(self.field)}: {self.message}" if self.field else self.description


def invalid(field: str, message: str, status: int = 422, code: str | None = None) -> ServiceError:
    """An input refused (422 unless ``status``): ``invalid_config`` for a config, else ``invalid_request``."""
    code = code or ("invalid_config" if field.startswith("configs.") else "invalid_request")
    return ServiceError(status, code, f"{field}: {message}", field=field, message=message)


def not_found(what: str, message: str, field: str | None = None) -> ServiceError:
    """404: a task, an upload or another thing of the caller's that does not exist (or is someone else's)."""
    return ServiceError(404, "not_found", f"{field}: {message}" if field else message, field=field, message=message)
