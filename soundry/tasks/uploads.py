"""Uploaded clips: stored decoded (FLAC) for their owner, read back as prompts, deleted on expiry."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
from sqlalchemy import delete, func, select

from soundry.audio.decode import decode_audio, encode_flac, sample_range
from soundry.storage import Storage
from soundry.tasks.models import Upload, utcnow
from soundry.tasks.store import TaskStore

log = logging.getLogger(__name__)


class UploadStore:
    def __init__(self, store: TaskStore, storage: Storage, retention_seconds: float = 24 * 3600.0):
        self.session, self.storage, self.retention = store.session, storage, retention_seconds

    def create(self, user_id: int, filename: str, data: bytes, max_seconds: float) -> Upload:
        """Decode ``data`` (raises ``UndecodableAudio``), store it as FLAC and record it.
        Nothing is kept when decoding or storing fails."""
        audio, rate = decode_audio(data, max_seconds)
        upload = Upload(user_id=user_id, filename=filename[:256], file_key="", sample_rate=rate,
                        channels=int(audio.shape[0]), duration=audio.shape[1] / rate, size=len(data),
                        expires_at=utcnow() + dt.timedelta(seconds=self.retention))
        upload.file_key = f"uploads/{user_id}/{upload.id}.flac"
        self.storage.put(upload.file_key, encode_flac(audio, rate), "audio/flac")
        try:
            with self.session() as s, s.begin():
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
            return int(s.scalar(select(func.count(Upload.id)).where(Upload.user_id == user_id)) or 0)

    def read(self, upload_id: str, user_id: int, start: float = 0.0, end: float | None = None
             ) -> tuple[np.ndarray, int]:
        """The clip [C, N] float32 between ``start`` and ``end`` seconds, and its rate."""
        up = self.get(upload_id, user_id)
        if up is None:
            raise LookupError(f"input audio {upload_id} no longer exists (deleted or expired)")
        import io

        import soundfile as sf

        audio, rate = sf.read(io.BytesIO(self.storage.get(up.file_key)), dtype="float32", always_2d=True)
        return np.ascontiguousarray(audio[sample_range(audio.shape[0], rate, start, end)].T), rate

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
