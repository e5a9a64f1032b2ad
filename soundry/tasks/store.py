"""The task store: every state change of a task goes through here, as one transaction."""

from __future__ import annotations

from sqlalchemy import create_engine, func, select, update
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.orm import sessionmaker

from soundry.tasks.models import FINAL_STATUSES, Base, Task, utcnow


def make_engine(url: str) -> SAEngine:
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _wal(conn, _record):  # concurrent readers while the worker writes
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
    return engine


class TaskStore:
    def __init__(self, url: str):
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    # -- reads -------------------------------------------------------------------------------------
    def get(self, task_id: str, user_id: int | None = None) -> Task | None:
        with self.session() as s:
            task = s.get(Task, task_id)
            if task is None or (user_id is not None and task.user_id != user_id):
                return None
            return task

    def history(self, user_id: int, limit: int = 20, offset: int = 0) -> tuple[list[Task], int]:
        with self.session() as s:
            q = select(Task).where(Task.user_id == user_id)
            total = s.scalar(select(func.count()).select_from(q.subquery()))
            rows = s.scalars(q.order_by(Task.created_at.desc(), Task.id).limit(limit).offset(offset)).all()
            return list(rows), int(total or 0)

    def count(self, status: str | None = None) -> int:
        with self.session() as s:
            q = select(func.count(Task.id))
            if status:
                q = q.where(Task.status == status)
            return int(s.scalar(q) or 0)

    def queue_position(self, task: Task) -> int | None:
        """1-based position among PENDING tasks of the same model (None unless PENDING)."""
        if task.status != "PENDING":
            return None
        with self.session() as s:
            ahead = s.scalar(select(func.count(Task.id)).where(
                Task.status == "PENDING", Task.model == task.model, Task.created_at < task.created_at))
            return int(ahead or 0) + 1

    def pending_ids(self, model: str | None = None, limit: int = 100) -> list[str]:
        with self.session() as s:
            q = select(Task.id).where(Task.status == "PENDING")
            if model:
                q = q.where(Task.model == model)
            return list(s.scalars(q.order_by(Task.created_at).limit(limit)))

    # -- writes ------------------------------------------------------------------------------------
    def create(self, task: Task) -> Task:
        with self.session() as s, s.begin():
            s.add(task)
        return task

    def claim(self, task_id: str, worker: str) -> Task | None:
        """PENDING → PROCESSING atomically; None if someone else claimed it or it was canceled."""
        with self.session() as s, s.begin():
            res = s.execute(update(Task).where(Task.id == task_id, Task.status == "PENDING").values(
                status="PROCESSING", started_at=utcnow(), worker=worker, attempts=Task.attempts + 1, percent=0))
            if res.rowcount != 1:
                return None
            return s.get(Task, task_id)

    def set_percent(self, task_id: str, percent: int) -> None:
        with self.session() as s, s.begin():
            s.execute(update(Task).where(Task.id == task_id, Task.status == "PROCESSING").values(percent=percent))

    def complete(self, task_id: str, file_key: str, file_format: str, sample_rate: int, audio_seconds: float,
                 seed: int | None) -> bool:
        with self.session() as s, s.begin():
            res = s.execute(update(Task).where(Task.id == task_id, Task.status == "PROCESSING").values(
                status="COMPLETED", percent=100, file_key=file_key, file_format=file_format,
                sample_rate=sample_rate, audio_seconds=audio_seconds, seed=seed, finished_at=utcnow()))
            return res.rowcount == 1

    def fail(self, task_id: str, reason: str) -> bool:
        with self.session() as s, s.begin():
            res = s.execute(update(Task).where(Task.id == task_id, Task.status.not_in(FINAL_STATUSES)).values(
                status="FAILED", error=reason[:2000], finished_at=utcnow()))
            return res.rowcount == 1

    def cancel(self, task_id: str) -> bool:
        with self.session() as s, s.begin():
            res = s.execute(update(Task).where(Task.id == task_id, Task.status.not_in(FINAL_STATUSES)).values(
                status="CANCELED", finished_at=utcnow()))
            return res.rowcount == 1

    def requeue_interrupted(self, worker: str | None = None) -> int:
        """PROCESSING tasks (of a worker, or all) back to PENDING — after a crash or restart."""
        with self.session() as s, s.begin():
            q = update(Task).where(Task.status == "PROCESSING")
            if worker:
                q = q.where(Task.worker == worker)
            return s.execute(q.values(status="PENDING", percent=0, worker="")).rowcount


