"""Users, passwords, API keys and JWT access/refresh tokens."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError, VerifyMismatchError
from sqlalchemy import select, update

from soundry.tasks.models import ApiKey, RefreshToken, User, utcnow
from soundry.tasks.store import TaskStore

_hasher = PasswordHasher()
KEY_PREFIX = "sk-"


class AuthError(Exception):
    """Credentials or token rejected; the message says why (without leaking which part)."""


class Accounts:
    def __init__(self, store: TaskStore, secret: str, access_ttl: int = 3600, refresh_ttl: int = 30 * 86400):
        self.store, self.secret = store, secret
        self.access_ttl, self.refresh_ttl = access_ttl, refresh_ttl
        self._verified: dict[str, bytes] = {}  # argon2 hash of an API key -> SHA-256 of the key that matched it

    # -- users ---------------------------------------------------------------------------------------
    def create_user(self, username: str, password: str, email: str = "", name: str = "", type: str = "user") -> User:
        if not username or not username.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError("username must be letters, digits, '.', '_' or '-'")
        if len(password) < 8:
            raise ValueError("password must have at least 8 characters")
        with self.store.session() as s, s.begin():
            if s.scalar(select(User).where(User.username == username)):
                raise ValueError(f"user {username!r} already exists")
            user = User(username=username, password_hash=_hasher.hash(password), email=email,
                        name=name or username, type=type)
            s.add(user)
        return user

    def get_user(self, username: str) -> User | None:
        with self.store.session() as s:
            return s.scalar(select(User).where(User.username == username))

    def user_by_id(self, user_id: int) -> User | None:
        with self.store.session() as s:
            return s.get(User, user_id)

    def list_users(self) -> list[User]:
        with self.store.session() as s:
            return list(s.scalars(select(User).order_by(User.id)))

    def user_count(self) -> int:
        return len(self.list_users())

    def authenticate(self, username: str, password: str) -> User:
        user = self.get_user(username)
        if user is None or not user.active:
            _hasher.hash(password)  # same work either way
            raise AuthError("wrong username or password")
        try:
            _hasher.verify(user.password_hash, password)
        except (VerifyMismatchError, VerificationError):
            raise AuthError("wrong username or password") from None
        with self.store.session() as s, s.begin():
            s.execute(update(User).where(User.id == user.id).values(last_login_at=utcnow()))
        return self.user_by_id(user.id)

    # -- API keys ------------------------------------------------------------------------------------
    def create_api_key(self, user: User, name: str = "") -> str:
        """Returns the key (shown once); only its hash is stored."""
        prefix = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{prefix}.{secrets.token_urlsafe(24)}"
        with self.store.session() as s, s.begin():
            s.add(ApiKey(user_id=user.id, prefix=prefix, key_hash=_hasher.hash(key), name=name))
        return key

    def revoke_api_key(self, key_or_prefix: str) -> bool:
        prefix = key_or_prefix.removeprefix(KEY_PREFIX).split(".")[0]
        with self.store.session() as s, s.begin():
            return s.execute(update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
                             .values(revoked_at=utcnow())).rowcount == 1

    def user_for_api_key(self, key: str) -> User:
        """The key's user. The row is read on every call, so revocation works at once; the argon2
        check (tens of ms) runs once per key and process, then a SHA-256 of the key is remembered."""
        prefix = key.removeprefix(KEY_PREFIX).split(".")[0]
        digest = hashlib.sha256(key.encode()).digest()
        with self.store.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
            if row is None or row.revoked_at is not None:
                raise AuthError("invalid or revoked API key")
            if not hmac.compare_digest(self._verified.get(row.key_hash, b""), digest):
                try:
                    _hasher.verify(row.key_hash, key)
                except (VerifyMismatchError, VerificationError):
                    raise AuthError("invalid or revoked API key") from None
                self._verified[row.key_hash] = digest
            user = s.get(User, row.user_id)
        if user is None or not user.active:
            raise AuthError("invalid or revoked API key")
        return user

    # -- JWTs ----------------------------------------------------------------------------------------
    def issue_tokens(self, user: User) -> dict:
        now = int(time.time())
        access = jwt.encode({"sub": str(user.id), "typ": "access", "iat": now, "exp": now + self.access_ttl},
                            self.secret, algorithm="HS256")
        jti = secrets.token_hex(16)
        refresh = jwt.encode({"sub": str(user.id), "typ": "refresh", "iat": now, "exp": now + self.refresh_ttl,
                              "jti": jti}, self.secret, algorithm="HS256")
        with self.store.session() as s, s.begin():
            s.add(RefreshToken(jti=jti, user_id=user.id,
                               expires_at=utcnow() + dt.timedelta(seconds=self.refresh_ttl)))
        return {"access_token": access, "refresh_token": refresh, "expires_in": self.access_ttl}

    def rotate_refresh_token(self, token: str) -> User:
        """Spend a refresh token (once). A second use means it leaked: every refresh token of the user
        is revoked, so whoever holds one must log in again."""
        claims = self._claims(token, "refresh")
        user = self._user_of(claims, "refresh")
        with self.store.session() as s, s.begin():
            spent = s.execute(update(RefreshToken).where(
                RefreshToken.jti == str(claims.get("jti", "")), RefreshToken.user_id == user.id,
                RefreshToken.used_at.is_(None)).values(used_at=utcnow())).rowcount
            if spent != 1:
                s.execute(update(RefreshToken).where(RefreshToken.user_id == user.id,
                                                     RefreshToken.used_at.is_(None)).values(used_at=utcnow()))
        if spent != 1:
            raise AuthError("refresh token already used or revoked; log in again")
        return user

    def _claims(self, token: str, typ: str) -> dict:
        try:
            return jwt.decode(token, self.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]})
        except jwt.ExpiredSignatureError:
            raise AuthError(f"{typ} token expired") from None
        except jwt.PyJWTError:
            raise AuthError(f"invalid {typ} token") from None

    def user_for_token(self, token: str, typ: str = "access") -> User:
        return self._user_of(self._claims(token, typ), typ)

    def _user_of(self, claims: dict, typ: str) -> User:
        if claims.get("typ") != typ:
            raise AuthError(f"invalid {typ} token")
        user = self.user_by_id(int(claims["sub"]))
        if user is None or not user.active:
            raise AuthError(f"invalid {typ} token")
        return user

    def user_for_bearer(self, credential: str) -> User:
        if credential.startswith(KEY_PREFIX):
            return self.user_for_api_key(credential)
        return self.user_for_token(credential, "access")


def profile(user: User) -> dict:
    return {"username": user.username, "name": user.name, "email": user.email, "type": user.type,
            "credits": user.credits, "last_login_at": fmt_time(user.last_login_at)}


def fmt_time(t: dt.datetime | None) -> str | None:
    return t.strftime("%Y-%m-%d %H:%M:%S.%f") if t else None
