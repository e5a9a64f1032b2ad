"""Settings: command-line flags > environment (SOUNDRY_*) > soundry.toml > defaults."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import tempfile
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

log = logging.getLogger(__name__)
MIN_SECRET_BYTES = 32
# the models' precision: the LM's (soundry.models.audiocraft.lm.precision), a Stable Audio DiT's
# (soundry.models.stable_audio.precision: int8 runs that family in fp32)
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


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
    max_task_attempts: int = 3  # starts of one task whose process died (OOM, crash) before it fails for good
    webhook_attempts: int = 5  # deliveries tried per webhook (backoff doubles from webhook_backoff seconds)
    webhook_backoff: float = 2.0
    webhook_timeout: float = 10.0  # overall deadline of one delivery attempt: resolve, connect, send, status line
    webhook_concurrency: int = 16  # deliveries in flight in one process
    webhook_concurrency_per_user: int = 2  # of those, at most this many for one user
    webhook_allow_cidrs: list[str] = field(default_factory=list)  # non-public networks webhooks may reach
    stale_pending_seconds: float = 600.0  # a task PENDING this long is re-sent (its message may be lost)
    # base of the links soundry signs (downloads, streams, webhooks' url_download): set it behind a proxy.
    # Unset: a request's Host header if it names one of allowed_hosts, else the address the connection
    # reached (never an unchecked Host header: a spoofed one would get a link to the attacker's host).
    public_url: str = ""
    allowed_hosts: list[str] = field(default_factory=list)  # Host names trusted for links ("*.example.org" too)
    listen_url: str = ""  # set by serve: http://HOST:PORT it listens on (base of links sent outside a request)
    secret: str = ""  # at least 32 bytes; per-purpose keys derive from it; default: generated into DATA_DIR/secret
    default_model: str = "audiogen"
    # more models: "name=/folder" or "name=hf:owner/repo@revision" (either format; SOUNDRY_MODEL_PATHS too)
    model_paths: list[str] = field(default_factory=list)
    # MultiBand Diffusion's weights (configs.decoder "mbd"): a folder holding mbd_musicgen_32khz.th, or the file;
    # "" = the hub's facebook/multiband-diffusion, downloaded on the first MBD task (SOUNDRY_MBD_PATH too)
    mbd_path: str = ""
    cog_model: str = "musicgen"  # the model Cog's local API (POST /predictions) runs
    stability_model: str = "stable-audio-3-small-music"  # the model Stability's REST API (/v2beta/audio/...) runs
    max_inline_output_bytes: int = 4 << 20  # Replicate/Cog outputs over this are a signed link, not a data: URL
    max_wait_seconds: float = 1800.0  # longest a request waits for its task's end (Cog's synchronous create)
    credential_cache_seconds: float = 10.0  # a verified API key/token is known this long (revoked elsewhere: so late)
    wait_poll_seconds: float = 1.0  # how often waits look for tasks ended by other processes (one query)
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
    login_attempts_per_address: int = 30  # login attempts (failed or not) per client address within the window
    login_window_seconds: float = 900.0
    max_upload_bytes: int = 20 * 1024 * 1024  # one uploaded clip, as sent
    max_upload_seconds: float = 120.0  # one uploaded clip, decoded
    max_uploads_per_user: int = 50  # kept at once
    upload_retention_hours: float = 24.0  # uploads are deleted this long after they arrive
    upload_purge_interval: float = 300.0  # seconds between sweeps for expired uploads
    upload_decode_concurrency: int = 2  # uploads decoded at once per process; more wait 5 s, then 503
    bearer_failures_per_address: int = 60  # refused tokens/API keys per client address within the window
    password_hash_concurrency: int = 2  # argon2 hashes at once (each takes 64 MiB); more wait, then 503
    rate_limit_storage: str = ""  # memory:// or redis://…; "" = the broker when it is Redis, else memory://
    worker: bool = True  # run the embedded worker in the API process
    preload: list[str] = field(default_factory=list)
    # -- bounded work per request and per connection (docs/reliability.md) --
    max_text_tokens: int = 256  # tokens of a prompt the text encoder sees; longer prompts are truncated
    max_event_streams_per_user: int = 4  # open progress streams (…/events) per user, per API process
    max_event_streams: int = 512  # open progress streams in all, per API process (beyond: 503)
    event_stream_seconds: float = 1800.0  # a progress stream ends after this (the client reconnects)
    max_concurrent_requests: int = 1024  # requests in progress per API process; beyond: 503 + Retry-After
    keep_alive_seconds: float = 75.0  # idle keep-alive; longer than clients' and proxies' own (httpx 5 s, nginx 60 s)
    header_timeout: float = 30.0  # a request head not complete this long after its first byte: connection closed
    body_timeout: float = 60.0  # a request body that stalls this long between chunks: 408, connection closed
    # ... and that comes slower than this many bytes/s after its first body_timeout seconds (mod_reqtimeout's
    # MinRate: the deadline grows 1 s per body_min_rate bytes): 408, connection closed; 0 = no minimum rate
    body_min_rate: float = 500.0
    melody_separations: int = 1  # melody stem separations (demucs) at once per process; more wait for a free one
    max_unauthenticated_requests_per_address: int = 64  # in progress per client address until authenticated; 429
    max_audio_streams_per_user: int = 8  # open audio streams (…/stream) per task owner, per API process (429)
    max_audio_streams: int = 512  # open audio streams in all, per API process (beyond: 503)
    forwarded_allow_ips: str = "127.0.0.1"  # proxies trusted for X-Forwarded-For/-Proto (comma-separated, CIDRs)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8 (auto: bf16 on a GPU, fp32 on the CPU)
    compile: bool = False  # compile the CPU fp32/bf16 decode step (torch.compile); 1.05-1.5x here, minutes to build
    # CPU fp32/bf16: the LM's linear layers on a kernel made for decode steps (cpu_linear; bf16: oneDNN's prepacked
    # layout, soundry.models.audiocraft.lm.packed, ~2x plain), false = plain nn.Linear.
    packed_weights: bool = True
    # CPU fp32 with packed_weights: auto = soundry's few-row linear kernel (soundry.models.audiocraft.lm.rows_kernel;
    # built once per machine with the C++ compiler; its linears 1.5-1.7x oneDNN's at batch 1, a tie from 8 requests),
    # oneDNN's where it cannot be built; onednn = always oneDNN's
    cpu_linear: str = "auto"
    kv_cache_memory: float = 0.9  # GPU: the KV cache takes at most this share of free memory (fewer slots if needed)
    # a diffusion engine's rows and decode take at most this share of free memory at its start (GPU: the device's;
    # CPU: the host's MemAvailable): fewer requests at a time than max_batch if needed (soundry.engine.memory)
    diffusion_memory: float = 0.9
    # Decode options built for the GPU, off by default until measured there (issue 24; each gives the same
    # tokens on and off in the CPU tests): the K output heads as one matmul; per-request uniforms hashed
    # from seed and step (rng = generator | counter; counter: a seed gives the same tokens on any device);
    # attention = masked | lengths | per_request (lengths: no boolean mask when every request is at the same
    # position; per_request: one attention call per request over its own keys, so its tokens do not depend on
    # what shares its batch; masked and lengths differ from that by float rounding, ~1e-6 of the logits).
    fused_heads: bool = False
    rng: str = "generator"
    attention: str = "masked"
    compile_cache_dir: str = ""  # inductor's caches, kept across restarts; default DATA_DIR/compile-cache

    ALIASES = {"database": "database_url", "broker": "broker_url", "storage": "storage_url", "public_base_url":
               "public_url", "login_failures_per_address": "login_attempts_per_address"}

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
        values.update({cls.ALIASES.get(k, k): v for k, v in overrides.items() if v is not None})
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
        for name, allowed in (("rng", ("generator", "counter")), ("attention", ("masked", "lengths", "per_request")),
                              ("cpu_linear", ("auto", "onednn"))):
            value = str(getattr(self, name)).strip().lower()
            if value not in allowed:
                raise ValueError(f"setting {name}: {value!r} is not one of {', '.join(allowed)}")
            setattr(self, name, value)
        if not 0 < float(self.kv_cache_memory) <= 1:
            raise ValueError(f"setting kv_cache_memory: {self.kv_cache_memory!r} is not a fraction in (0, 1]")
        if not 0 < float(self.diffusion_memory) <= 1:
            raise ValueError(f"setting diffusion_memory: {self.diffusion_memory!r} is not a fraction in (0, 1]")

    @property
    def linear_kernel(self) -> bool | str:
        """The loader's ``packed`` (``apply_precision``): ``cpu_linear`` with ``packed_weights``, else False."""
        return self.cpu_linear if self.packed_weights else False

    @property
    def compile_cache(self) -> Path:
        """Where inductor keeps its caches (compiled kernels, autotuning results)."""
        base = Path(self.compile_cache_dir) if self.compile_cache_dir else Path(self.data_dir) / "compile-cache"
        return base.expanduser().resolve()

    def finalize(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        make_private_dir(self.data_dir)
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'soundry.db'}"
        if not self.storage_url:
            self.storage_url = str(self.data_dir / "files")
        if self.secret:
            check_secret(self.secret, "the secret setting (SOUNDRY_SECRET / soundry.toml)")
        else:
            self.secret = load_or_create_secret(self.data_dir / "secret")
        self.webhook_networks()  # a bad CIDR fails at start, not at the first webhook
        return self

    def webhook_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """``webhook_allow_cidrs`` parsed: the non-public networks an operator lets webhooks reach."""
        nets = []
        for cidr in self.webhook_allow_cidrs:
            try:
                nets.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError:
                raise ValueError(f"setting webhook_allow_cidrs: {cidr!r} is not a network such as 10.0.0.0/8") from None
        return nets


def make_private_dir(path: Path) -> None:
    """Create the data directory readable by its owner only, and take group/other access away from an
    existing one and from the files directly in it (database, WAL, secret) that older versions left open."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for entry in (path, *path.iterdir()):
        try:
            mode = entry.lstat().st_mode
            if not entry.is_symlink() and mode & 0o077:
                entry.chmod(mode & 0o7700)
        except OSError as exc:  # not ours (e.g. a mounted volume): say so, do not stop
            log.warning("cannot restrict the permissions of %s: %s", entry, exc.strerror)


def check_secret(secret: str, where: str) -> None:
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"{where} holds {len(secret.encode())} bytes; a secret needs at least {MIN_SECRET_BYTES} "
                         "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')")


def load_or_create_secret(path: Path) -> str:
    """The secret in ``path``, created on first use: written in full to a private temporary file (mode 0600
    from birth, O_CREAT|O_EXCL), then hard-linked to its name, which never replaces an existing file, so two
    processes starting together agree on one secret and nobody can read a half-written or open file."""
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race: its secret is the one
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    secret = path.read_text().strip()
    check_secret(secret, f"the secret file {path}")
    return secret


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
