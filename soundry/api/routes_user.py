"""Account routes: login, refresh, profile, history."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request

from soundry.accounts import AuthError, profile
from soundry.api.deps import basic_credentials, current_user, services
from soundry.api.envelope import ApiError, ok
from soundry.api.tasks_view import task_result
from soundry.tasks.models import User

router = APIRouter(prefix="/v1/user", tags=["user"])


def _tokens(request: Request, user: User):
    return ok(request, {**profile(user), **services(request).accounts.issue_tokens(user)})


@router.post("/login", summary="Log in with HTTP Basic credentials; returns access and refresh tokens")
def login(request: Request):
    username, password = basic_credentials(request)
    try:
        user = services(request).accounts.authenticate(username, password)
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None
    return _tokens(request, user)


@router.post("/refresh_token", summary="Exchange a refresh token (form field) for new tokens")
def refresh_token(request: Request, refresh_token: str = Form(..., description="the refresh token from login")):
    try:
        user = services(request).accounts.user_for_token(refresh_token, "refresh")
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None
    return _tokens(request, user)


@router.api_route("/me", methods=["GET", "POST"], summary="The caller's profile")
def me(request: Request, user: User = Depends(current_user)):
    return ok(request, profile(user))


@router.get("/history", summary="The caller's tasks, newest first")
def history(request: Request, user: User = Depends(current_user), limit: int = Query(20, ge=1, le=200),
            offset: int = Query(0, ge=0)):
    svc = services(request)
    tasks, total = svc.store.history(user.id, limit, offset)
    return ok(request, {"total": total, "limit": limit, "offset": offset,
                        "tasks": [task_result(request, t)["data"] for t in tasks]})
