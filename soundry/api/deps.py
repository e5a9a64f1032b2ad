"""Shared services of the app and the authentication dependency."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from fastapi import Request

from soundry.accounts import Accounts, AuthError
from soundry.api.envelope import ApiError
from soundry.config import Settings
from soundry.storage import Storage
from soundry.tasks.models import User
from soundry.tasks.store import TaskStore


@dataclass
class Services:
    settings: Settings
    store: TaskStore
    accounts: Accounts
    storage: Storage
    queue: object  # EmbeddedQueue | CeleryQueue: enqueue(task_id, model), cancel(task_id)
    engines: object | None = None  # EngineManager in embedded mode; None when Celery workers run the models
    webhooks: object | None = None  # WebhookSender
    limits: object | None = None  # Limits
    live: object | None = None  # LiveAudio: tasks' audio while generated (embedded mode); None with Celery workers


def services(request: Request) -> Services:
    return request.app.state.services


def current_user(request: Request) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <access token or API key>'",
                       {"WWW-Authenticate": "Bearer"})
    svc = services(request)
    try:
        user = svc.accounts.user_for_bearer(credential.strip())
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc), {"WWW-Authenticate": "Bearer"}) from None
    if svc.limits is not None:
        svc.limits.check_request(user.id)
    return user


def basic_credentials(request: Request) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise ApiError(401, "unauthorized", "send HTTP Basic credentials (username and password)",
                       {"WWW-Authenticate": 'Basic realm="soundry"'})
    try:
        username, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(401, "unauthorized", "malformed Basic credentials") from None
    return username, password
