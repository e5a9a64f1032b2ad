"""Account routes: login, refresh, profile, history."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request

from soundry.api.flexstack.views import task_result
from soundry.api.http.auth import basic_credentials, busy, client_address, current_user, services
from soundry.api.http.docs import History, Me, Tokens, answers
from soundry.api.http.envelope import ApiError, ok
from soundry.service.accounts import AuthBusy, AuthError, profile
from soundry.signing import webhook_secret
from soundry.tasks.models import User

router = APIRouter(prefix="/v1/user", tags=["user"])


def _tokens(request: Request, user: User):
    return ok(request, {**profile(user), **services(request).accounts.issue_tokens(user)})


@router.post("/login", summary="Log in with HTTP Basic credentials; returns access and refresh tokens",
             responses=answers(Tokens, 200, 401, 429, 503))
def login(request: Request):
    username, password = basic_credentials(request)
    svc = services(request)
    svc.limits.reserve_login(username, client_address(request))  # counted before the password is checked
    try:
        user = svc.accounts.authenticate(username, password)
    except AuthBusy as exc:
        raise busy(exc) from None
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None
    svc.limits.login_succeeded(username)
    return _tokens(request, user)


@router.post("/refresh_token", summary="Exchange a refresh token (form field) for new tokens",
             responses=answers(Tokens, 200, 401, 422, 429),
             description="Refresh tokens rotate: each can be used once and the answer carries a new one. "
                         "Reusing a spent token is refused and revokes every refresh token of that user.")
def refresh_token(request: Request, refresh_token: str = Form(..., min_length=1, max_length=4096,
                                                                description="the refresh token from login")):
    svc, address = services(request), client_address(request)
    svc.limits.check_bearer(address)  # a refused refresh token counts as any refused credential does
    try:
        user, tokens = svc.accounts.rotate_refresh_token(refresh_token)
    except AuthError as exc:
        svc.limits.bearer_failed(address)
        raise ApiError(401, "unauthorized", str(exc)) from None
    return ok(request, {**profile(user), **tokens})


@router.post("/me", summary="The caller's profile (POST, as FlexStack clients call it)", operation_id="me_post",
             responses=answers(Me, 200, 401, 429))
@router.get("/me", summary="The caller's profile", operation_id="me_get", responses=answers(Me, 200, 401, 429))
def me(request: Request, user: User = Depends(current_user)):
    secret = webhook_secret(services(request).settings.secret, user.id)
    return ok(request, {**profile(user), "webhook_secret": secret})


@router.get("/history", summary="The caller's tasks, newest first", responses=answers(History, 200, 401, 422, 429))
def history(request: Request, user: User = Depends(current_user), limit: int = Query(20, ge=1, le=200),
            offset: int = Query(0, ge=0, le=1_000_000_000)):
    svc = services(request)
    tasks, total = svc.store.history(user.id, limit, offset)
    return ok(request, {"total": total, "limit": limit, "offset": offset,
                        "tasks": [task_result(request, t)["data"] for t in tasks]})
