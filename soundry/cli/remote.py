"""CLI commands that talk to a soundry server through ``soundry.Client``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from soundry.client import Client, SoundryError, Task


def add_connection_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("server connection (for generate --url, tasks, models list)")
    g.add_argument("--url", default=os.environ.get("SOUNDRY_URL"),
                   help="server base URL, e.g. http://127.0.0.1:8000 (env SOUNDRY_URL)")
    g.add_argument("--api-key", default=os.environ.get("SOUNDRY_API_KEY"), help="API key (env SOUNDRY_API_KEY)")
    g.add_argument("--username", default=os.environ.get("SOUNDRY_USERNAME"), help="(env SOUNDRY_USERNAME)")
    g.add_argument("--password", default=os.environ.get("SOUNDRY_PASSWORD"), help="(env SOUNDRY_PASSWORD)")


def connect(args: argparse.Namespace) -> Client:
    if not (args.api_key or (args.username and args.password)):
        raise SystemExit("error: give --api-key (or SOUNDRY_API_KEY), or --username and --password")
    return Client(args.url or "http://127.0.0.1:8000", api_key=args.api_key, username=args.username,
                  password=args.password)


def progress_bar(label: str):
    """A tqdm bar driven by task updates: queue position while PENDING, percent after."""
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", desc=label[:50])

    def update(task: Task) -> None:
        if task.status == "PENDING" and task.queue_position:
            eta = f", ~{task.eta_seconds:.0f} s" if task.eta_seconds else ""
            bar.set_postfix_str(f"queued #{task.queue_position}{eta}")
        else:
            bar.set_postfix_str(task.status.lower())
        bar.n = task.percent
        bar.refresh()

    return bar, update


def generate(args: argparse.Namespace) -> int:
    out = Path(args.output)
    configs = {"model": args.model, "duration": args.duration, "normalization": args.normalization,
               "output_format": out.suffix.lstrip(".").lower() or "wav"}
    for name in ("top_k", "top_p", "temperature", "cfg_coef", "steps"):  # given ones only: the model's defaults
        if getattr(args, name, None) is not None:
            configs[name] = getattr(args, name)
    if args.seed is not None:
        configs["seed"] = args.seed
    if args.continuation_start or args.continuation_end is not None:
        configs.update(continuation_start=args.continuation_start, continuation_end=args.continuation_end)
    if args.decoder:
        configs["decoder"] = args.decoder
    uploads = {"input_audio": args.input_audio, "melody": args.melody}  # local files, uploaded first
    for name, path in uploads.items():
        if path and not Path(path).is_file():
            print(f"error: --{name.replace('_', '-')}: no such file {path}", file=sys.stderr)
            return 2
    bar, update = progress_bar(f"{args.model}: {args.prompt}")
    try:
        with connect(args) as client:
            for name, path in uploads.items():
                if path:
                    configs[name] = client.upload(path)["id"]
            task = client.submit(args.prompt, args.negative_prompt or "", **configs)
            audio = task.wait(progress=update).audio()
    except SoundryError as exc:
        bar.close()
        print(f"error: {exc.description} ({exc.code})", file=sys.stderr)
        return 1
    except OSError as exc:  # a local --input-audio / --melody file that cannot be read
        bar.close()
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    bar.close()
    audio.save(out)
    print(f"wrote {out} ({audio.duration:.2f} s, {audio.sample_rate} Hz, task {audio.task_id})")
    return 0


def _line(t: Task) -> str:
    i = t.info
    return (f"{t.id}  {t.status:<10} {t.percent:>3}%  {i.get('config', {}).get('model', ''):<15} "
            f"{i.get('config', {}).get('duration', '')!s:>5}s  {i.get('created_at') or '':<26}  "
            f"{(i.get('prompt') or '')[:50]}")


def tasks(args: argparse.Namespace) -> int:
    try:
        with connect(args) as client:
            if args.tasks_command == "list":
                for t in client.history(args.limit, args.offset):
                    print(_line(t))
            elif args.tasks_command == "show":
                t = client.task(args.task_id)
                for key, value in t.info.items():
                    print(f"{key:>18}: {value}")
            else:
                t = client.task(args.task_id).cancel()
                print(f"task {t.id} is {t.status}")
    except SoundryError as exc:
        print(f"error: {exc.description} ({exc.code})", file=sys.stderr)
        return 1
    return 0


def models_list(args: argparse.Namespace) -> int:
    """Models of a server (with --url), else the registry with where each one's weights are."""
    if args.url:
        try:
            with connect(args) as client:
                for m in client.models():
                    meta = m["metadata"]
                    print(f"{m['model']:<17} {meta.get('hub_repo', ''):<28} {meta.get('description', '')}")
        except SoundryError as exc:
            print(f"error: {exc.description} ({exc.code})", file=sys.stderr)
            return 1
        return 0
    from soundry.cli.models import list_local

    return list_local(args)


def models_pull(args: argparse.Namespace) -> int:
    """Download a model's weights into the Hugging Face cache (on the machine that serves them)."""
    from soundry.cli.models import pull

    return pull(args)
