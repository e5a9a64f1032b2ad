"""Users, passwords, API keys and JWT access/refresh tokens.

Passwords are argon2 hashes; at most ``hash_concurrency`` hashes run at once (each takes 64 MiB), the
rest wait up to ``HASH_WAIT`` seconds and are then refused as busy. API keys are high-entropy, so they
are stored as HMAC-SHA256 digests keyed with a key derived from the server secret and compared in
constant time: no argon2 per request. A key stored by an older version as an argon2 hash is verified
with argon2 once, at its next use, and its row rewritten to the HMAC digest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError, VerifyMismatchError
from sqlalchemy import select, update

from soundry.signing import derive_key
from soundry.tasks.models import ApiKey, RefreshToken, User, utcnow
from soundry.tasks.result import fmt_time
from soundry.tasks.store import TaskStore

_hasher = PasswordHasher()
KEY_PREFIX = "sk-"
HMAC_SCHEME = "hmac-sha256$"
MAX_USER_ID = 2**31 - 1  # users.id is an INTEGER column (32 bits on PostgreSQL)
HASH_WAIT = 10.0  # seconds a login waits for a free argon2 slot before it is refused as busy


class AuthError(Exception):
    """Credentials or token rejected; the message says why (without leaking which part)."""


class AuthBusy(Exception):
    """Every argon2 slot stayed busy: the caller should answer 503 and ask the client to retry."""


class Accounts:
    def __init__(self, store: TaskStore, secret: str, access_ttl: int = 3600, refresh_ttl: int = 30 * 86400,
                 hash_concurrency: int = 2):
        self.store = store
        self._jwt_key = derive_key(secret, "jwt")
        self._api_key_mac = derive_key(secret, "api-key")
        self.access_ttl, self.refresh_ttl = access_ttl, refresh_ttl
        self._hash_slots = threading.BoundedSemaphore(max(1, hash_concurrency))
        self.changed_hooks: list = []  # called when a key is revoked or a user disabled or enabled here

    def _argon2(self, fn, *args):
        """Run one argon2 hash or verification inside the bounded pool of slots."""
        if not self._hash_slots.acquire(timeout=HASH_WAIT):
            raise AuthBusy("the server is busy checking passwords; try again in a few seconds")
        try:
            return fn(*args)
        finally:
            self._hash_slots.release()

    def _password_matches(self, password_hash: str, password: str) -> bool:
        try:
            return self._argon2(_hasher.verify, password_hash, password)
        except (VerifyMismatchError, VerificationError):
            return False

    # -- users ---------------------------------------------------------------------------------------
    def create_user(self, username: str, password: str, email: str = "", name: str = "", type: str = "user") -> User:
        if not username or not username.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError("username must be letters, digits, '.', '_' or '-'")
        if len(password) < 8:
            raise ValueError("password must have at least 8 characters")
        with self.store.session() as s, s.begin():
            if s.scalar(select(User).where(User.username == username)):
                raise ValueError(f"user {username!r} already exists")
            user = User(username=username, password_hash=self._argon2(_hasher.hash, password), email=email,
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
            self._argon2(_hasher.hash, password)  # same work either way
            raise AuthError("wrong username or password")
        if not self._password_matches(user.password_hash, password):
            raise AuthError("wrong username or password")
        with self.store.session() as s, s.begin():
            s.execute(update(User).where(User.id == user.id).values(last_login_at=utcnow()))
        return self.user_by_id(user.id)

    # -- API keys ------------------------------------------------------------------------------------
    def _key_digest(self, key: str) -> str:
        return HMAC_SCHEME + hmac.new(self._api_key_mac, key.encode(), hashlib.sha256).hexdigest()

    def create_api_key(self, user: User, name: str = "") -> str:
        """Returns the key (shown once); only its keyed digest is stored."""
        prefix = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{prefix}.{secrets.token_urlsafe(24)}"
        with self.store.session() as s, s.begin():
            s.add(ApiKey(user_id=user.id, prefix=prefix, key_hash=self._key_digest(key), name=name))
        return key

    def revoke_api_key(self, key_or_prefix: str) -> bool:
        prefix = key_or_prefix.removeprefix(KEY_PREFIX).split(".")[0]
        with self.store.session() as s, s.begin():
            done = s.execute(update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
                             .values(revoked_at=utcnow())).rowcount == 1
        self._changed()
        return done

    def _changed(self) -> None:
        """Credentials may now be refused: whatever remembers verified ones forgets them."""
        for hook in self.changed_hooks:
            hook()

    def user_for_api_key(self, key: str) -> User:
        """The key's user. The row is read on every call, so revocation works at once."""
        invalid = AuthError("invalid or revoked API key")
        if len(key) > 200:
            raise invalid
        prefix = key.removeprefix(KEY_PREFIX).split(".")[0]
        digest = self._key_digest(key)
        with self.store.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
            if row is None or row.revoked_at is not None:
                raise invalid
            if row.key_hash.startswith(HMAC_SCHEME):
                if not hmac.compare_digest(row.key_hash.encode(), digest.encode()):
                    raise invalid
            elif self._password_matches(row.key_hash, key):  # an argon2 hash from an older version
                s.execute(update(ApiKey).where(ApiKey.id == row.id).values(key_hash=digest))
                s.commit()
            else:
                raise invalid
            user = s.get(User, row.user_id)
        if user is None or not user.active:
            raise invalid
        return user

    def set_active(self, username: str, active: bool) -> bool:
        """Disable or enable a user (a disabled user's tokens and API keys are refused at once here, and within
        ``credential_cache_seconds`` by the API processes: ``soundry.service.credentials``)."""
        with self.store.session() as s, s.begin():
            done = s.execute(update(User).where(User.username == username).values(active=active)).rowcount == 1
        self._changed()
        return done

    # -- JWTs ----------------------------------------------------------------------------------------
    def _new_tokens(self, user: User) -> tuple[dict, RefreshToken]:
        """A new access/refresh pair and the refresh token's row (for the caller's transaction to add)."""
        now = int(time.time())
        access = jwt.encode({"sub": str(user.id), "typ": "access", "iat": now, "exp": now + self.access_ttl},
                            self._jwt_key, algorithm="HS256")
        jti = secrets.token_hex(16)
        refresh = jwt.encode({"sub": str(user.id), "typ": "refresh", "iat": now, "exp": now + self.refresh_ttl,
                              "jti": jti}, self._jwt_key, algorithm="HS256")
        row = RefreshToken(jti=jti, user_id=user.id, expires_at=utcnow() + dt.timedelta(seconds=self.refresh_ttl))
        return {"access_token": access, "refresh_token": refresh, "expires_in": self.access_ttl}, row

    def issue_tokens(self, user: User) -> dict:
        tokens, row = self._new_tokens(user)
        with self.store.session() as s, s.begin():
            s.add(row)
        return tokens

    def rotate_refresh_token(self, token: str) -> tuple[User, dict]:
        """Spend a refresh token (once) for a new pair. A second use means it leaked: every refresh token of
        the user is revoked, so whoever holds one must log in again.

        Spend and issue are one transaction under the user's lock (TaskStore.lock_user), and so is a reuse's
        revocation: a concurrent reuse waits for the winner's new token and revokes it too."""
        claims = self._claims(token, "refresh")
        user = self._user_of(claims, "refresh")
        tokens, row = self._new_tokens(user)
        with self.store.session() as s, s.begin():
            self.store.lock_user(s, user.id)
            spent = s.execute(update(RefreshToken).where(
                RefreshToken.jti == str(claims.get("jti", "")), RefreshToken.user_id == user.id,
                RefreshToken.used_at.is_(None)).values(used_at=utcnow())).rowcount
            if spent == 1:
                s.add(row)
            else:
                s.execute(update(RefreshToken).where(RefreshToken.user_id == user.id,
                                                     RefreshToken.used_at.is_(None)).values(used_at=utcnow()))
        if spent != 1:
            raise AuthError("refresh token already used or revoked; log in again")
        return user, tokens

    def _claims(self, token: str, typ: str) -> dict:
        try:
            return jwt.decode(token, self._jwt_key, algorithms=["HS256"], options={"require": ["exp", "sub"]})
        except jwt.ExpiredSignatureError:
            raise AuthError(f"{typ} token expired") from None
        except jwt.PyJWTError:
            raise AuthError(f"invalid {typ} token") from None

    def user_for_token(self, token: str, typ: str = "access") -> User:
        return self._user_of(self._claims(token, typ), typ)

    def _user_of(self, claims: dict, typ: str) -> User:
        if claims.get("typ") != typ or (user_id := _user_id(claims.get("sub"))) is None:
            raise AuthError(f"invalid {typ} token")
        user = self.user_by_id(user_id)
        if user is None or not user.active:
            raise AuthError(f"invalid {typ} token")
        return user

    def user_for_bearer(self, credential: str) -> User:
        if credential.startswith(KEY_PREFIX):
            return self.user_for_api_key(credential)
        return self.user_for_token(credential, "access")


def _user_id(sub) -> int | None:
    """A token's subject as a user id: only the form this module writes (``str(user.id)``: ASCII digits,
    no sign, spaces or leading zeros) within the id column's range; anything else is None."""
    if not isinstance(sub, str) or not sub.isascii() or not sub.isdigit() or len(sub) > 10 or str(int(sub)) != sub:
        return None
    return int(sub) if 0 < int(sub) <= MAX_USER_ID else None


def profile(user: User) -> dict:
    return {"username": user.username, "name": user.name, "email": user.email, "type": user.type,
            "credits": user.credits, "last_login_at": fmt_time(user.last_login_at)}

