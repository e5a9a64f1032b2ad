"""Database tables: users, API keys, tasks (SQLAlchemy 2; SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    email: Mapped[str] = mapped_column(String(256), default="")
    type: Mapped[str] = mapped_column(String(16), default="user")  # user | admin
    password_hash: Mapped[str] = mapped_column(String(256))
    credits: Mapped[float] = mapped_column(Float, default=0.0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ApiKey(Base):
    """An API key is shown once; stored as a keyed HMAC-SHA256 digest ("hmac-sha256$<hex>"; older rows: an
    argon2 hash, rewritten at first use), found by its non-secret prefix."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: uuid.uuid4().hex)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[dict] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="PENDING", index=True)
    percent: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(128), default="")
    file_key: Mapped[str] = mapped_column(String(256), default="")
    file_format: Mapped[str] = mapped_column(String(8), default="")
    sample_rate: Mapped[int] = mapped_column(Integer, default=0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # a PROCESSING task belongs to its worker while the lease is renewed; a dead worker's lease runs out
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    webhook: Mapped[str] = mapped_column(Text, default="")
    webhook_state: Mapped[str] = mapped_column(String(16), default="")  # "" | pending | delivered | failed
    # the owner's rating of a finished task (POST /v1/ai/feedback): RATING_RANGE, and free text
    rating: Mapped[float | None] = mapped_column(Float, nullable=True)
    feedback: Mapped[str] = mapped_column(Text, default="")
    rated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class RefreshToken(Base):
    """One row per issued refresh token: a token can be exchanged once (rotation); reuse is refused."""

    __tablename__ = "refresh_tokens"
    jti: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Upload(Base):
    """An audio clip a user uploaded to continue from (``configs.input_audio``); decoded and stored as
    FLAC, deleted when ``expires_at`` passes or its owner deletes it."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: uuid.uuid4().hex)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    filename: Mapped[str] = mapped_column(String(256), default="")
    file_key: Mapped[str] = mapped_column(String(256))
    sample_rate: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    duration: Mapped[float] = mapped_column(Float)
    size: Mapped[int] = mapped_column(Integer)  # bytes as uploaded
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


FINAL_STATUSES = ("COMPLETED", "FAILED", "CANCELED")
RATING_RANGE = (1.0, 5.0)  # feedback ratings: 1 (worst) to 5 (best), fractions allowed
FEEDBACK_MAX_CHARS = 2000
