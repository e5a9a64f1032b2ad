"""The ``soundry`` command: serve, worker, migrate, users (on the server's machine); generate, tasks,
models (through a server with --url, or locally)."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import sys

from soundry.config import PRECISIONS


def _global_options(default) -> argparse.ArgumentParser:
    """--config and --data-dir, accepted before the subcommand and after it (``soundry serve --data-dir X``).
    On subcommands their default is SUPPRESS, so a value given before the subcommand is kept."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", default=default, help="path of soundry.toml (default ./soundry.toml)")
    p.add_argument("--data-dir", default=default,
                   help="where the database, secret and audio files live (default ./data)")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="soundry", description="Self-hosted text-to-audio service",
                                 parents=[_global_options(None)])
    common = _global_options(argparse.SUPPRESS)

    def command(subparsers, name: str, **kw) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[common], **kw)

    sub = ap.add_subparsers(dest="command", required=True)

    sp = command(sub, "serve", help="run the API (with an in-process worker unless a broker is configured)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--public-url", help="base URL for download links (default: the request's)")
    sp.add_argument("--preload", help="comma-separated models to load at start")
    wp = command(sub, "worker", help="run a Celery worker for the given models (distributed mode)")
    wp.add_argument("--models", default="audiogen,musicgen", help="comma-separated models to load and serve")
    wp.add_argument("--concurrency", type=int, default=32, help="task executions in flight (threads)")
    wp.add_argument("--loglevel", default="INFO")
    mp = command(sub, "migrate", help="bring the database schema to the newest revision and print it")
    for p in (sp, wp, mp):
        p.add_argument("--database", help="SQLite path/URL or postgresql://… (default DATA_DIR/soundry.db)")
    for p in (sp, wp):
        p.add_argument("--broker", help="redis://… or amqp://… for Celery workers (default: embedded worker)")
        p.add_argument("--storage", help="a directory or s3://bucket/prefix (default DATA_DIR/files)")
        p.add_argument("--precision", choices=PRECISIONS,
                       help="how the models' LM runs (default auto: bf16 on a GPU, fp32 on the CPU)")
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="compile the CPU fp32 decode step per batch bucket in the background "
                            "(default off: measured slower than eager on our CPU; see bench/RESULTS.md)")
        p.add_argument("--compile-cache-dir", help="inductor's caches (default DATA_DIR/compile-cache)")

    up = command(sub, "users", help="manage accounts")
    usub = up.add_subparsers(dest="users_command", required=True)
    uc = command(usub, "create", help="create a user (asks for the password unless --password is given)")
    uc.add_argument("name")
    uc.add_argument("--password", help="the password (omit it to be asked, so it stays out of the shell history)")
    uc.add_argument("--email", default="")
    uc.add_argument("--admin", action="store_true")
    command(usub, "token", help="create an API key for a user (printed once)").add_argument("name")
    command(usub, "revoke-key", help="revoke an API key (the key, or its prefix: sk-PREFIX)").add_argument("key")
    command(usub, "disable", help="disable a user: their tokens and API keys stop working at once").add_argument(
        "name")
    command(usub, "enable", help="enable a disabled user again").add_argument("name")
    command(usub, "list", help="list users")

    gp = command(sub, "generate", help="generate one clip through a server (--url) or locally")
    from soundry.cli.generate import add_arguments
    from soundry.cli.remote import add_connection_arguments

    add_arguments(gp)
    tp = command(sub, "tasks", help="your tasks on a server: list, show, cancel")
    tsub = tp.add_subparsers(dest="tasks_command", required=True)
    tl = command(tsub, "list", help="newest first")
    tl.add_argument("--limit", type=int, default=20)
    tl.add_argument("--offset", type=int, default=0)
    leaves = [gp, tl]
    for name in ("show", "cancel"):
        leaves.append(command(tsub, name, help=f"{name} one task"))
        leaves[-1].add_argument("task_id")
    mdp = command(sub, "models", help="list models (a server's with --url), or pull weights")
    msub = mdp.add_subparsers(dest="models_command", required=True)
    leaves.append(command(msub, "list", help="model names, and where their weights are"))
    command(msub, "pull", help="download a model's release weights into the Hugging Face cache (a gated "
                                 "repository needs HF_TOKEN; Stability's layout is converted to diffusers' here; "
                                 "the text encoder and codec of an audiocraft model follow on first load)"
            ).add_argument("name")
    ma = command(msub, "add", help="add a model from a folder or hf:owner/repo@revision, in audiocraft's, "
                                   "transformers' or diffusers' layout or Stability's (converted) (recorded in the "
                                   "data directory; serve and worker load it)")
    ma.add_argument("name", help="the name requests use (\"model\": NAME)")
    ma.add_argument("source", help="a folder, or hf:owner/repo[@revision] (the revision is pinned to its commit)")
    ma.add_argument("--adapter", help="a PEFT LoRA adapter (folder or hf:...) merged into the weights at load")
    ma.add_argument("--family", choices=["musicgen", "audiogen"], default="musicgen",
                    help="an audiocraft model's family (a Stable Audio folder says its own)")
    command(msub, "remove", help="forget an added model (its files stay)").add_argument("name")
    for p in leaves:
        add_connection_arguments(p)

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.command in ("generate", "tasks", "models") else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command == "models" and args.models_command in ("add", "remove"):
        from soundry.cli import models

        old_umask = os.umask(0o077)  # models.json lives in the data directory, the owner's only
        try:
            return models.add(args) if args.models_command == "add" else models.remove(args)
        finally:
            os.umask(old_umask)
    if args.command in ("generate", "tasks", "models"):
        from soundry.cli import generate, remote

        if args.command == "generate":
            return remote.generate(args) if args.url else generate.run(args)
        if args.command == "tasks":
            return remote.tasks(args)
        if args.models_command == "list":
            return remote.models_list(args)
        return remote.models_pull(args)
    old_umask = os.umask(0o077)  # what the server side creates (database, files, secret) is the owner's only
    try:
        return server_side(args)
    finally:
        os.umask(old_umask)


def server_side(args) -> int:
    """serve, worker, migrate, users: commands that work on the data directory and database."""
    from soundry.config import Settings

    database = getattr(args, "database", None)
    if database and "://" not in database:
        database = f"sqlite:///{database}"
    try:
        settings = Settings.load(args.config, data_dir=args.data_dir, public_url=getattr(args, "public_url", None),
                                 preload=getattr(args, "preload", None), database_url=database,
                                 broker_url=getattr(args, "broker", None), storage_url=getattr(args, "storage", None),
                                 precision=getattr(args, "precision", None), compile=getattr(args, "compile", None),
                                 compile_cache_dir=getattr(args, "compile_cache_dir", None))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command in ("serve", "worker"):  # models added with `soundry models add` or named in model_paths
        from soundry.models.sources.added import open_catalog

        try:
            open_catalog(settings.data_dir, settings.model_paths)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "serve":
        return serve(settings, args.host, args.port)
    if args.command == "worker":
        from soundry.api.predictions.core import webhook_body
        from soundry.tasks.worker import run_worker

        run_worker(settings, [m for m in args.models.split(",") if m], args.concurrency, args.loglevel, webhook_body)
        return 0
    if args.command == "migrate":
        from soundry.tasks import migrate

        try:
            store = admin_store(settings)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"database at revision {migrate.current_revision(store.engine)} (head {migrate.head_revision()})")
        return 0
    return users(settings, args)


def admin_store(settings):
    """The task store for an admin command (migrate, users), its schema brought to the newest revision — but
    never under a running embedded server (the data directory's lock held): that server's code reads the schema
    it started with. Beside one, a database already at the newest revision is used as it is, and an older one is
    refused with a sentence (stop the server, then migrate). The lock is held while this command migrates, so a
    server starting meanwhile waits for nothing half-done: it is refused, naming this command."""
    from soundry.data_dir_lock import DataDirInUse, DataDirLock
    from soundry.tasks import migrate
    from soundry.tasks.store import TaskStore

    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire(f"soundry {' '.join(sys.argv[1:3]) or 'admin command'} (migrating)")
    except DataDirInUse as exc:
        store = TaskStore(settings.database_url, upgrade=False)
        current, head = migrate.current_revision(store.engine), migrate.head_revision()
        if current != head:
            store.engine.dispose()
            raise ValueError(f"the database is at revision {current or 'none'} and this soundry needs {head}, but "
                             f"{str(exc).split('; ')[0].removeprefix('the data directory ')}: it is not migrated "
                             "under a running server; stop that server, then run soundry migrate (or start the "
                             "new version, which migrates first)") from None
        return store
    try:
        return TaskStore(settings.database_url)
    finally:
        lock.release()


def _accounts(settings):
    from soundry.service.accounts import Accounts

    return Accounts(admin_store(settings), settings.secret)


def _ask_password() -> str:
    password = getpass.getpass("password: ")
    if password != getpass.getpass("again: "):
        raise ValueError("the two passwords differ")
    return password


def users(settings, args) -> int:
    try:
        accounts = _accounts(settings)
        if args.users_command == "create":
            password = args.password if args.password is not None else _ask_password()
            user = accounts.create_user(args.name, password, email=args.email, type="admin" if args.admin else "user")
            print(f"created user {user.username}")
        elif args.users_command == "token":
            user = accounts.get_user(args.name)
            if user is None:
                raise ValueError(f"no user {args.name!r}")
            print(accounts.create_api_key(user))
        elif args.users_command == "revoke-key":
            if not accounts.revoke_api_key(args.key):
                raise ValueError("no such API key, or it is already revoked")
            print("revoked")
        elif args.users_command in ("disable", "enable"):
            if not accounts.set_active(args.name, args.users_command == "enable"):
                raise ValueError(f"no user {args.name!r}")
            print(f"{args.users_command}d user {args.name}")
        else:
            for u in accounts.list_users():
                state = "active" if u.active else "disabled"
                print(f"{u.username}\t{u.type}\t{state}\t{u.email}\t{u.created_at:%Y-%m-%d}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def bootstrap_first_user(settings) -> None:
    """On first start with no users, create one and print its credentials once (serve holds the data
    directory's lock and migrates the database here, first)."""
    from soundry.service.accounts import Accounts
    from soundry.tasks.store import TaskStore

    accounts = Accounts(TaskStore(settings.database_url), settings.secret)
    if accounts.list_users():
        return
    password = secrets.token_urlsafe(12)
    user = accounts.create_user("admin", password, type="admin")
    key = accounts.create_api_key(user, name="first start")
    print("\n  soundry: first start — created an account (shown only once):\n"
          f"    username: admin\n    password: {password}\n    API key:  {key}\n", flush=True)


def serve(settings, host: str, port: int) -> int:
    import uvicorn

    from soundry.api.app import create_app
    from soundry.api.http.server import uvicorn_config
    from soundry.data_dir_lock import DataDirInUse, DataDirLock
    from soundry.tasks.result import WILDCARDS, listened_url

    lock = None
    if not settings.broker_url and settings.worker:  # held before anything opens the database (and migrates it)
        try:
            lock = DataDirLock(settings.data_dir).acquire()
        except DataDirInUse as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        bootstrap_first_user(settings)
        settings.listen_url = listened_url(host, port)  # links sent outside a request (webhooks) name this server
        if not settings.public_url and host in WILDCARDS:
            print(f"  soundry: public_url is unset; links sent outside a request name {settings.listen_url} "
                  "(set public_url to the address clients use)", flush=True)
        print(f"  soundry: data in {settings.data_dir}; API at http://{host}:{port}/v1 ; docs at "
              f"http://{host}:{port}/docs", flush=True)
        uvicorn.Server(uvicorn_config(create_app(settings, data_lock=lock), settings, host, port)).run()
    finally:
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
