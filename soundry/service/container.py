"""The objects one process serves with (the store, accounts, storage, queue, engines, ...), built once from the
settings, and the use cases over them (``tasks``: :class:`soundry.service.tasks.TaskService`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from soundry.config import Settings
from soundry.models.catalog import Catalog
from soundry.service.accounts import Accounts
from soundry.service.credentials import CredentialCache
from soundry.service.limits import Limits
from soundry.storage import Storage, open_storage
from soundry.tasks.live_audio import LiveAudio
from soundry.tasks.store import TaskStore
from soundry.tasks.uploads import UploadStore
from soundry.tasks.watch import TaskWatch
from soundry.tasks.webhooks import WebhookSender


@dataclass
class Services:
    settings: Settings
    store: TaskStore
    accounts: Accounts
    storage: Storage
    queue: object  # EmbeddedQueue | CeleryQueue: enqueue(task_id, model), cancel(task_id)
    engines: object | None = None  # EngineManager in embedded mode; None when Celery workers run the models
    webhooks: WebhookSender | None = None
    limits: Limits | None = None
    uploads: UploadStore | None = None
    live: object | None = None  # LiveAudio: tasks' audio while generated (embedded mode); None with Celery workers
    catalog: Catalog = field(default_factory=Catalog)
    watch: TaskWatch | None = None  # waits for tasks' ends (event-driven, one batched poll)
    credentials: CredentialCache | None = None  # who a bearer credential is, remembered for a few seconds
    tasks: object = None  # TaskService, set by build_services

    def __post_init__(self):
        if self.credentials is None:
            self.credentials = CredentialCache(self.accounts, self.settings.credential_cache_seconds)
        if self.watch is None:
            self.watch = TaskWatch(self.store, self.settings.wait_poll_seconds)
        if self.tasks is None:
            from soundry.service.tasks import TaskService

            self.tasks = TaskService(self)


def build_services(settings: Settings, catalog: Catalog, queue=None, webhook_bodies=None) -> Services:
    """Everything a process serves with; the embedded queue and its engines unless ``queue`` is given (Celery).
    ``webhook_bodies`` renders the webhook body of a task created on a wire API that has its own
    (``WebhookSender``)."""
    store = TaskStore(settings.database_url)
    accounts = Accounts(store, settings.secret, settings.access_token_ttl, settings.refresh_token_ttl,
                        hash_concurrency=settings.password_hash_concurrency)
    storage = open_storage(settings.storage_url, settings)
    webhooks = WebhookSender(store, settings, webhook_bodies)
    engines = live = None
    if queue is None:
        live = live_audio(settings.broker_url)
        queue, engines = make_queue(settings, store, storage, webhooks, live)
    uploads = UploadStore(store, storage, settings.upload_retention_hours * 3600, settings.upload_decode_concurrency)
    return Services(settings, store, accounts, storage, queue, engines, webhooks, Limits(settings, store), uploads,
                    live, catalog)


def live_audio(broker_url: str):
    """Where tasks' audio comes from while generated: this process (embedded), Redis (workers on a
    Redis broker), or nowhere (RabbitMQ: the stored file once ready)."""
    if not broker_url:
        return LiveAudio()
    if broker_url.startswith(("redis://", "rediss://")):
        from soundry.tasks.live_redis import RedisLiveReader

        return RedisLiveReader(broker_url)
    return None


def make_queue(settings: Settings, store: TaskStore, storage, webhooks: WebhookSender, live: LiveAudio | None = None):
    """Celery workers when a broker is configured, else the embedded queue (in-process worker)."""
    if settings.broker_url:
        from soundry.tasks.distributed import CeleryQueue

        return CeleryQueue(settings.broker_url), None
    from soundry.tasks.embedded import EmbeddedQueue
    from soundry.tasks.engines import EngineManager
    from soundry.tasks.runner import TaskRunner
    from soundry.tasks.webhooks import attach_webhooks

    engines = EngineManager.from_settings(settings)
    runner = TaskRunner(store, storage, engines, lease_seconds=settings.lease_seconds, live=live,
                        max_attempts=settings.max_task_attempts)
    attach_webhooks(runner, webhooks)
    return EmbeddedQueue(runner, concurrency=4 * settings.max_batch), engines
