"""The task store: every state change of a task goes through here, as one transaction."""

from __future__ import annotations

import datetime as dt
import os
import threading

from sqlalchemy import and_, case, create_engine, func, make_url, or_, select, text, update
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.orm import sessionmaker

from soundry.tasks import migrate
from soundry.tasks.models import FINAL_STATUSES, Task, User, utcnow

QUEUE_LOCK = 0x50D7E  # PostgreSQL advisory lock held by a create that counts the whole queue


class LimitExceeded(Exception):
    """A new task refused by a cap: ``kind`` is "queue", "tasks" or "audio"; ``count``/``seconds`` are what
    is already there (PENDING tasks in all for "queue"; the user's unfinished tasks and their seconds else)."""

    def __init__(self, kind: str, count: int, seconds: float = 0.0):
        super().__init__(f"{kind} limit reached ({count} tasks, {seconds:g} s)")
        self.kind, self.count, self.seconds = kind, count, seconds


def _private_sqlite_file(url: str) -> None:
    """Create the SQLite file readable by its owner only (SQLite gives its -wal and -shm files the same
    mode), and take group/other access away from existing ones.

    An existing database file is never opened here: closing any descriptor of it drops every POSIX lock
    this process holds on it (SQLite's documented pitfall), and another process's SQLite then believes
    it is the last connection and deletes the WAL under us. Only a file that did not exist is created
    (O_EXCL: no connection of ours can hold it); permissions of existing files change by path."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        try:
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            pass


_engines: dict[str, SAEngine] = {}
_engines_lock = threading.Lock()


def make_engine(url: str) -> SAEngine:
    """The process's one SQLAlchemy engine for ``url``: every store, command and app of a process shares it,
    so a SQLite file is opened by one connection pool per process."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = _new_engine(url)
        return engine


def _new_engine(url: str) -> SAEngine:
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _wal(conn, _record):  # concurrent readers while the worker writes
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
    return engine


def _lapsed(now: dt.datetime):
    """PROCESSING under a lease that lapsed, or under none (its worker died; another may take it over)."""
    return and_(Task.status == "PROCESSING", or_(Task.lease_until.is_(None), Task.lease_until < now))


class TaskStore:
    def __init__(self, url: str, upgrade: bool = True):
        """``upgrade``: bring the schema to the newest revision first (every server and worker does; an admin
        command beside a running server must not, see ``soundry.cli.main.admin_store``)."""
        self.engine = make_engine(url)
        if upgrade:
            migrate.upgrade(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        self.end_hooks: list = []  # called with a task's id once this process ended it (soundry.tasks.watch)

    def _ended(self, task_id: str, ended: bool) -> bool:
        if ended:
            for hook in self.end_hooks:
                hook(task_id)
        return ended

    # -- reads -------------------------------------------------------------------------------------
    def get(self, task_id: str, user_id: int | None = None) -> Task | None:
        with self.session() as s:
            task = s.get(Task, task_id)
            if task is None or (user_id is not None and task.user_id != user_id):
                return None
            return task

    def ended_among(self, task_ids: list[str]) -> dict[str, Task]:
        """Those of ``task_ids`` that have ended, in one query."""
        with self.session() as s:
            rows = s.scalars(select(Task).where(Task.id.in_(task_ids), Task.status.in_(FINAL_STATUSES))).all()
            return {t.id: t for t in rows}

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

    def status_counts(self) -> dict[str, int]:
        with self.session() as s:
            return {st: int(n) for st, n in s.execute(select(Task.status, func.count(Task.id)).group_by(Task.status))}

    def pending_by_model(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(Task.model, func.count(Task.id)).where(Task.status == "PENDING")
                             .group_by(Task.model))
            return {model: int(n) for model, n in rows}

    def active_load(self, user_id: int) -> tuple[int, float]:
        """(unfinished tasks, their requested audio seconds) of a user — for per-user limits."""
        with self.session() as s:
            rows = s.execute(select(Task.config).where(Task.user_id == user_id,
                                                       Task.status.in_(("PENDING", "PROCESSING")))).all()
        return len(rows), sum(float(r[0].get("duration", 0)) for r in rows)

    def queue_position(self, task: Task) -> int | None:
        """1-based position among PENDING tasks of the same model (None unless PENDING)."""
        if task.status != "PENDING":
            return None
        with self.session() as s:
            ahead = s.scalar(select(func.count(Task.id)).where(
                Task.status == "PENDING", Task.model == task.model, Task.created_at < task.created_at))
            return int(ahead or 0) + 1

    def seconds_per_audio_second(self, model: str, recent: int = 20) -> float | None:
        """Median wall seconds per audio second of the model's recent completed tasks (None if none)."""
        with self.session() as s:
            rows = s.execute(select(Task.started_at, Task.finished_at, Task.audio_seconds).where(
                Task.status == "COMPLETED", Task.model == model, Task.audio_seconds > 0).order_by(
                Task.finished_at.desc()).limit(recent)).all()
        rates = sorted((f - st).total_seconds() / a for st, f, a in rows if st and f)
        return rates[len(rates) // 2] if rates else None

    def rating_histogram(self, bounds: tuple[float, ...]) -> tuple[list[int], int, float]:
        """Task ratings for /metrics, aggregated in SQL: (cumulative count at or below each bound, count, sum)."""
        cols = [func.count(case((Task.rating <= b, 1))) for b in bounds]
        with self.session() as s:
            row = s.execute(select(*cols, func.count(Task.rating), func.sum(Task.rating))).one()
        return [int(n) for n in row[:-2]], int(row[-2]), float(row[-1] or 0.0)

    def owners(self, task_ids: list[str]) -> dict[str, tuple[str, str]]:
        """task_id -> (status, worker) for the given tasks, in one query."""
        with self.session() as s:
            rows = s.execute(select(Task.id, Task.status, Task.worker).where(Task.id.in_(task_ids)))
            return {tid: (status, worker) for tid, status, worker in rows}

    def runnable_ids(self, limit: int = 100) -> list[str]:
        """Tasks a worker may start now, oldest first: PENDING, or PROCESSING under a lease that lapsed
        (its worker died; the claim takes it over atomically)."""
        with self.session() as s:
            q = select(Task.id).where(or_(Task.status == "PENDING", _lapsed(utcnow())))
            return list(s.scalars(q.order_by(Task.created_at).limit(limit)))

    def stale_tasks(self, models: list[str] | None = None, pending_for: float = 600.0,
                    limit: int = 500) -> list[tuple[str, str]]:
        """Tasks that may have lost their queue message: PENDING for a while, or PROCESSING with a lapsed lease."""
        now = utcnow()
        with self.session() as s:
            q = select(Task.id, Task.model).where(or_(
                and_(Task.status == "PENDING", Task.created_at < now - dt.timedelta(seconds=pending_for)),
                _lapsed(now)))
            if models:
                q = q.where(Task.model.in_(models))
            return [tuple(row) for row in s.execute(q.order_by(Task.created_at).limit(limit))]

    # -- writes ------------------------------------------------------------------------------------
    def create(self, task: Task) -> Task:
        """Insert a task as is, past every cap (tests, admin tools); routes use create_within_limits."""
        with self.session() as s, s.begin():
            s.add(task)
        return task

    @staticmethod
    def lock_user(s, user_id: int) -> None:
        """Take the user's write lock; must be the transaction's FIRST statement. On SQLite an UPDATE of the
        user's row takes the database write lock before any snapshot is read (WAL); on PostgreSQL
        ``SELECT … FOR UPDATE`` takes the row's lock without writing a new row version (an UPDATE per create
        left a dead tuple, index entries and WAL each time). Transactions that start with it run one at a
        time per user and each sees the previous one's writes (READ COMMITTED reads anew per statement)."""
        if s.get_bind().dialect.name == "postgresql":
            s.execute(select(User.id).where(User.id == user_id).with_for_update())
        else:
            s.execute(update(User).where(User.id == user_id).values(active=User.active))

    def create_within_limits(self, task: Task, max_unfinished: int = 0, max_seconds: float = 0.0,
                             max_pending: int = 0) -> Task:
        """Insert ``task`` unless that would pass a cap (0 = none): PENDING tasks in all, the owner's unfinished
        tasks, the owner's requested seconds of audio. The counts and the insert are one transaction under
        the owner's lock (and, for the queue cap on PostgreSQL, a global one; SQLite's write lock is global
        already), so concurrent creates cannot all pass one check. Raises LimitExceeded."""
        with self.session() as s, s.begin():
            self.lock_user(s, task.user_id)
            if max_pending:
                if self.engine.dialect.name == "postgresql":
                    s.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": QUEUE_LOCK})
                pending = int(s.scalar(select(func.count(Task.id)).where(Task.status == "PENDING")) or 0)
                if pending >= max_pending:
                    raise LimitExceeded("queue", pending)
            rows = s.execute(select(Task.config).where(Task.user_id == task.user_id,
                                                       Task.status.in_(("PENDING", "PROCESSING")))).all()
            active, seconds = len(rows), sum(float(r[0].get("duration", 0)) for r in rows)
            if max_unfinished and active >= max_unfinished:
                raise LimitExceeded("tasks", active, seconds)
            if max_seconds and seconds + float(task.config.get("duration", 0)) > max_seconds:
                raise LimitExceeded("audio", active, seconds)
            s.add(task)
        return task

    def claim(self, task_id: str, worker: str, lease_seconds: float = 30.0, max_attempts: int = 0) -> Task | None:
        """PENDING (or PROCESSING by a worker whose lease lapsed) → PROCESSING by ``worker``, atomically.

        None if another live worker holds it or it is finished or canceled. A task already started
        ``max_attempts`` times (each start whose process died counts: out of memory, a crash) is not
        started again: it becomes FAILED with that reason, and is returned so that the caller reports it."""
        now = utcnow()
        claimable = or_(Task.status == "PENDING", _lapsed(now))
        with self.session() as s, s.begin():
            if max_attempts > 0:
                res = s.execute(update(Task).where(Task.id == task_id, claimable, Task.attempts >= max_attempts)
                                .values(status="FAILED", finished_at=now, worker="", error=(
                                    f"the task was started {max_attempts} times and its process stopped each time "
                                    "before it finished (out of memory, or a crash); it is not retried again")))
                if res.rowcount == 1:
                    return s.get(Task, task_id)
            res = s.execute(update(Task).where(Task.id == task_id, claimable).values(
                status="PROCESSING", started_at=now, worker=worker, attempts=Task.attempts + 1, percent=0,
                lease_until=now + dt.timedelta(seconds=lease_seconds)))
            if res.rowcount != 1:
                return None
            return s.get(Task, task_id)

    def renew_leases(self, worker: str, lease_seconds: float) -> int:
        """Extend the leases of every task this worker is processing (called periodically while alive)."""
        with self.session() as s, s.begin():
            return s.execute(update(Task).where(Task.worker == worker, Task.status == "PROCESSING").values(
                lease_until=utcnow() + dt.timedelta(seconds=lease_seconds))).rowcount

    def _owned(self, task_id: str, worker: str | None):
        cond = [Task.id == task_id, Task.status == "PROCESSING"]
        if worker is not None:
            cond.append(Task.worker == worker)
        return update(Task).where(*cond)

    def set_percent(self, task_id: str, percent: int, worker: str | None = None) -> None:
        with self.session() as s, s.begin():
            s.execute(self._owned(task_id, worker).values(percent=percent))

    def complete(self, task_id: str, file_key: str, file_format: str, sample_rate: int, audio_seconds: float,
                 seed: int | None, worker: str | None = None) -> bool:
        """PROCESSING → COMPLETED, only for the worker that holds the task: a task completes once."""
        with self.session() as s, s.begin():
            res = s.execute(self._owned(task_id, worker).values(
                status="COMPLETED", percent=100, file_key=file_key, file_format=file_format,
                sample_rate=sample_rate, audio_seconds=audio_seconds, seed=seed, finished_at=utcnow()))
        return self._ended(task_id, res.rowcount == 1)

    def fail(self, task_id: str, reason: str, worker: str | None = None) -> bool:
        """Any unfinished task → FAILED (with ``worker``: only while that worker holds it)."""
        with self.session() as s, s.begin():
            q = self._owned(task_id, worker) if worker is not None else update(Task).where(
                Task.id == task_id, Task.status.not_in(FINAL_STATUSES))
            res = s.execute(q.values(status="FAILED", error=reason[:2000], finished_at=utcnow()))
        return self._ended(task_id, res.rowcount == 1)

    def cancel(self, task_id: str) -> bool:
        with self.session() as s, s.begin():
            res = s.execute(update(Task).where(Task.id == task_id, Task.status.not_in(FINAL_STATUSES)).values(
                status="CANCELED", finished_at=utcnow()))
        return self._ended(task_id, res.rowcount == 1)

    def set_feedback(self, task_id: str, user_id: int, rating: float, feedback: str) -> Task | None:
        """Store the owner's rating and text with a task (a later call replaces them); None if not theirs."""
        with self.session() as s, s.begin():
            res = s.execute(update(Task).where(Task.id == task_id, Task.user_id == user_id).values(
                rating=rating, feedback=feedback, rated_at=utcnow()))
            if res.rowcount != 1:
                return None
        return self.get(task_id)

    def pending_webhooks(self, limit: int = 1000) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(Task.id).where(Task.webhook_state == "pending",
                                                        Task.status.in_(FINAL_STATUSES)).limit(limit)))

    def set_webhook_state(self, task_id: str, state: str) -> None:
        with self.session() as s, s.begin():
            s.execute(update(Task).where(Task.id == task_id).values(webhook_state=state))

    def release(self, worker: str) -> int:
        """A worker that stops cleanly hands its PROCESSING tasks back (PENDING, this start not counted), so
        the next start runs them at once instead of waiting for their leases to lapse."""
        with self.session() as s, s.begin():
            return s.execute(update(Task).where(Task.status == "PROCESSING", Task.worker == worker).values(
                status="PENDING", percent=0, worker="", lease_until=None,
                attempts=case((Task.attempts > 0, Task.attempts - 1), else_=0))).rowcount

    def uncount_lost_start(self, task_id: str, worker: str) -> bool:
        """Take back the start of ``worker``, alive, that lost the task (its lease lapsed while its housekeeping
        stalled, and another worker took the task or it went back to PENDING): only starts whose process died
        count toward ``max_attempts``. Nothing for a task this worker still holds or that was canceled."""
        with self.session() as s, s.begin():
            return s.execute(update(Task).where(Task.id == task_id, Task.worker != worker, Task.attempts > 0,
                                                Task.status != "CANCELED").values(
                attempts=Task.attempts - 1)).rowcount == 1

    def requeue_lapsed(self) -> int:
        """PROCESSING tasks whose lease lapsed (their worker died) back to PENDING. A task whose worker is
        alive renews its lease and is left alone, whichever process or machine runs it."""
        with self.session() as s, s.begin():
            return s.execute(update(Task).where(_lapsed(utcnow())).values(
                status="PENDING", percent=0, worker="")).rowcount
