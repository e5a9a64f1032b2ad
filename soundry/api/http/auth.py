"""Who is calling: bearer credentials (access token or API key, however a wire API sends them) and Basic
credentials, with the refusals counted against the client's address."""

from __future__ import annotations

import base64
import binascii

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from soundry.api.http.envelope import ApiError
from soundry.api.http.server import address_group, authenticated
from soundry.service.accounts import AuthBusy, AuthError
from soundry.service.container import Services
from soundry.tasks.models import User


def services(request: Request) -> Services:
    """The app's services (``soundry.service.container``)."""
    return request.app.state.services


def client_address(request: Request) -> str:
    """The client as the per-address limits count it: its address, or its /64 for IPv6 (``address_group``)."""
    return address_group(request.client.host) if request.client else "unknown"


def busy(exc: AuthBusy) -> ApiError:
    return ApiError(503, "unavailable", str(exc), {"Retry-After": "5"})


async def current_user(request: Request) -> User:
    """The caller, from a bearer access token or API key (see ``user_for_credential``)."""
    return await bearer_user(request)


async def bearer_user(request: Request, schemes: tuple[str, ...] = ("bearer",),
                      hint: str = "send 'Authorization: Bearer <access token or API key>'") -> User:
    """The user of ``Authorization: <scheme> <credential>`` for one of ``schemes``; 401 (``hint``) otherwise."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() not in schemes or not credential.strip():
        raise ApiError(401, "unauthorized", hint, {"WWW-Authenticate": "Bearer"})
    return await user_for_credential(request, credential.strip(), "unauthorized", {"WWW-Authenticate": "Bearer"})


async def _limit(svc, fn, *args):
    """A rate-limit call: on the event loop when the counts are in memory, else (Redis) on the thread pool."""
    if svc.limits.in_memory:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


async def user_for_credential(request: Request, credential: str, code: str, headers: dict | None = None) -> User:
    """The user of an access token or API key, however it was sent (``Authorization: Bearer``,
    ``xi-api-key``). Refused credentials count against the client address; an address over its budget
    gets 429 before anything is verified. A refusal answers 401 with ``code`` and ``headers``. A credential
    verified moments ago is known without waiting for the thread pool (``soundry.service.credentials``)."""
    svc = services(request)
    address = client_address(request)
    if svc.limits is not None:
        await _limit(svc, svc.limits.check_bearer, address)
    try:
        user = await svc.credentials.user_for(credential)
    except AuthBusy as exc:
        raise busy(exc) from None
    except AuthError as exc:
        if svc.limits is not None:
            await _limit(svc, svc.limits.bearer_failed, address)
        raise ApiError(401, code, str(exc), headers) from None
    authenticated(request)  # no longer counted against the address's unauthenticated requests
    if svc.limits is not None:
        await _limit(svc, svc.limits.check_request, user.id)
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
