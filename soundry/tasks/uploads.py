"""Uploaded clips: stored decoded (FLAC) for their owner, read back as prompts, deleted on expiry."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import threading
import uuid
from typing import BinaryIO

import numpy as np
from sqlalchemy import delete, func, select

from soundry.audio.decode import decode_to_flac, sample_range
from soundry.storage import Storage
from soundry.tasks.models import Upload, utcnow
from soundry.tasks.store import TaskStore

log = logging.getLogger(__name__)


class TooManyUploads(Exception):
    """The user keeps as many uploads as allowed (429)."""


class DecodersBusy(Exception):
    """Every decode slot stayed busy (503 with Retry-After)."""


def too_many_uploads(cap: int) -> str:
    return f"you have {cap} uploads; delete some (DELETE /v1/uploads/{{id}}) or wait for them to expire"


class UploadStore:
    DECODE_WAIT = 5.0  # seconds an upload waits for a decode slot before it is refused as busy

    def __init__(self, store: TaskStore, storage: Storage, retention_seconds: float = 24 * 3600.0,
                 decode_concurrency: int = 2):
        self.session, self.storage, self.retention = store.session, storage, retention_seconds
        self._decode_slots = threading.BoundedSemaphore(max(1, decode_concurrency))

    def create(self, user_id: int, filename: str, src: BinaryIO, size: int, max_seconds: float,
               max_uploads: int) -> Upload:
        """Decode the file ``src`` (``size`` bytes as sent; raises ``UndecodableAudio``) block by block into
        FLAC, store it and record it, unless the user already keeps ``max_uploads`` (``TooManyUploads``).
        At most ``decode_concurrency`` decodes run at once; a caller that waits ``DECODE_WAIT`` seconds for a
        slot gets ``DecodersBusy``. Nothing is kept when decoding, storing or the cap refuses it."""
        if not self._decode_slots.acquire(timeout=self.DECODE_WAIT):
            raise DecodersBusy("the server is busy decoding other uploads; try again in a few seconds")
        with tempfile.TemporaryFile() as flac:  # the clip lives on disk; storage reads it from there in parts
            try:
                rate, channels, frames = decode_to_flac(src, flac, max_seconds)
            finally:
                self._decode_slots.release()
            flac.seek(0)
            # the id is set here: the column default only applies at the insert, after the file is named
            upload = Upload(id=uuid.uuid4().hex, user_id=user_id, filename=filename[:256], file_key="",
                            sample_rate=rate, channels=channels, duration=frames / rate, size=size,
                            expires_at=utcnow() + dt.timedelta(seconds=self.retention))
            upload.file_key = f"uploads/{user_id}/{upload.id}.flac"
            self.storage.put_file(upload.file_key, flac, "audio/flac")
        try:
            with self.session() as s, s.begin():
                # the count and the insert are one step: parallel uploads of a user queue on its lock
                TaskStore.lock_user(s, user_id)
                if self._count(s, user_id) >= max_uploads:
                    raise TooManyUploads(too_many_uploads(max_uploads))
                s.add(upload)
        except Exception:
            self.storage.delete(upload.file_key)
            raise
        return upload

    def get(self, upload_id: str, user_id: int) -> Upload | None:
        """The caller's own, unexpired upload (another user's id is simply not found)."""
        with self.session() as s:
            up = s.get(Upload, upload_id) if len(upload_id) <= 64 else None
            if up is None or up.user_id != user_id or up.expires_at <= utcnow():
                return None
            return up

    def count(self, user_id: int) -> int:
        with self.session() as s:
            return self._count(s, user_id)

    @staticmethod
    def _count(s, user_id: int) -> int:
        return int(s.scalar(select(func.count(Upload.id)).where(Upload.user_id == user_id)) or 0)

    def read(self, upload_id: str, user_id: int, start: float = 0.0, end: float | None = None
             ) -> tuple[np.ndarray, int]:
        """The clip [C, N] float32 between ``start`` and ``end`` seconds, and its rate."""
        up = self.get(upload_id, user_id)
        if up is None:
            raise LookupError(f"input audio {upload_id} no longer exists (deleted or expired)")
        import soundfile as sf

        # the stored FLAC is opened, not read whole (an upload may be minutes of 192 kHz audio): only the part
        # is read from it and decoded
        with self.storage.open_read(up.file_key) as src, sf.SoundFile(src) as f:
            part = sample_range(f.frames, f.samplerate, start, end)
            first = min(part.start, f.frames)
            f.seek(first)
            audio = f.read(max(0, part.stop - first), dtype="float32", always_2d=True)
            return np.ascontiguousarray(audio.T), int(f.samplerate)

    def delete(self, upload_id: str, user_id: int) -> bool:
        up = self.get(upload_id, user_id)
        if up is None:
            return False
        self._remove([up])
        return True

    def purge_expired(self, limit: int = 500) -> int:
        """Delete up to ``limit`` expired uploads (file, then row); returns how many."""
        with self.session() as s:
            rows = list(s.scalars(select(Upload).where(Upload.expires_at <= utcnow()).limit(limit)))
        self._remove(rows)
        return len(rows)

    def _remove(self, rows: list[Upload]) -> None:
        for up in rows:
            try:
                self.storage.delete(up.file_key)
            except Exception:  # the row goes anyway; a leftover file is logged, not served
                log.exception("deleting upload file %s failed", up.file_key)
        if rows:
            with self.session() as s, s.begin():
                s.execute(delete(Upload).where(Upload.id.in_([u.id for u in rows])))
