"""Settings: command-line flags > environment (SOUNDRY_*) > soundry.toml > defaults."""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # the LM's precision (soundry.engine.precision)


@dataclass
class Settings:
    data_dir: Path = Path("./data")
    database_url: str = ""  # default: sqlite:///DATA_DIR/soundry.db
    storage_url: str = ""  # default: DATA_DIR/files
    broker_url: str = ""  # "" = embedded in-process worker; redis://… or amqp://… = Celery workers
    s3_endpoint_url: str = ""  # for s3:// storage: an S3-compatible endpoint (MinIO, moto, …); "" = AWS
    s3_access_key_id: str = ""  # "" = boto3's usual credential chain (env, ~/.aws, instance role)
    s3_secret_access_key: str = ""
    s3_region: str = "us-east-1"
    lease_seconds: float = 30.0  # a worker renews its tasks' leases; a dead worker's tasks are retaken after this
    reconcile_interval: float = 30.0  # how often a worker re-sends stale tasks
    webhook_attempts: int = 5  # deliveries tried per webhook (backoff doubles from webhook_backoff seconds)
    webhook_backoff: float = 2.0
    stale_pending_seconds: float = 600.0  # a task PENDING this long is re-sent (its message may be lost)
    public_url: str = ""  # base for download links; default: the request's own base URL
    secret: str = ""  # signs tokens and download links; default: generated into DATA_DIR/secret
    default_model: str = "audiogen"
    max_duration: float = 300.0
    max_prompt_chars: int = 2000
    max_batch: int = 16
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 30 * 24 * 3600
    download_ttl: int = 24 * 3600
    requests_per_minute: int = 600  # per user, every authenticated request (0 = unlimited)
    max_active_tasks_per_user: int = 64  # PENDING + PROCESSING
    max_queued_audio_seconds_per_user: float = 3600.0  # requested seconds of unfinished tasks
    max_queue: int = 5000  # PENDING tasks in all; beyond it creates answer 503
    login_failures_per_user: int = 5  # failed logins per username within login_window_seconds
    login_failures_per_address: int = 20  # failed logins per client address within the window
    login_window_seconds: float = 900.0
    worker: bool = True  # run the embedded worker in the API process
    preload: list[str] = field(default_factory=list)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8 (auto: bf16 on a GPU, fp32 on the CPU)
    compile: bool = False  # compile the CPU fp32 decode step per batch bucket (torch.compile); measured slower here
    compile_cache_dir: str = ""  # inductor's caches, kept across restarts; default DATA_DIR/compile-cache

    ALIASES = {"database": "database_url", "broker": "broker_url", "storage": "storage_url", "public_base_url":
               "public_url"}

    @classmethod
    def load(cls, config_file: str | None = None, finalize: bool = True, **overrides) -> Settings:
        """``finalize=False`` reads the settings without creating the data directory or secret
        (for commands such as a local ``generate`` that only need a few of them)."""
        values: dict = {}
        path = Path(config_file or os.environ.get("SOUNDRY_CONFIG", "soundry.toml"))
        if path.is_file():
            table = tomllib.loads(path.read_text()).get("soundry", {})
            values.update({cls.ALIASES.get(k, k): v for k, v in table.items()})
        for alias, name in cls.ALIASES.items():  # SOUNDRY_DATABASE, SOUNDRY_BROKER, SOUNDRY_STORAGE
            if os.environ.get(f"SOUNDRY_{alias.upper()}") is not None:
                values[name] = os.environ[f"SOUNDRY_{alias.upper()}"]
        for f in fields(cls):
            env = os.environ.get(f"SOUNDRY_{f.name.upper()}")
            if env is not None:
                values[f.name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls()
        for f in fields(cls):
            if f.name in values:
                setattr(s, f.name, _coerce(f.name, values[f.name], getattr(s, f.name)))
        s.check()
        return s.finalize() if finalize else s

    def check(self) -> None:
        self.precision = str(self.precision).strip().lower()
        if self.precision not in PRECISIONS:
            raise ValueError(f"setting precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    @property
    def compile_cache(self) -> Path:
        """Where inductor keeps its caches (compiled kernels, autotuning results)."""
        base = Path(self.compile_cache_dir) if self.compile_cache_dir else Path(self.data_dir) / "compile-cache"
        return base.expanduser().resolve()

    def finalize(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'soundry.db'}"
        if not self.storage_url:
            self.storage_url = str(self.data_dir / "files")
        if not self.secret:
            secret_file = self.data_dir / "secret"
            if not secret_file.exists():
                secret_file.write_text(secrets.token_hex(32))
                secret_file.chmod(0o600)
            self.secret = secret_file.read_text().strip()
        return self


def _coerce(name: str, value, default):
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if isinstance(default, list):
        return value if isinstance(value, list) else [v for v in str(value).split(",") if v]
    if isinstance(default, Path):
        return Path(value)
    try:
        return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"setting {name}: cannot read {value!r} as {type(default).__name__}") from exc
