"""``soundry models add | remove | list`` on the machine that serves the models (its data directory)."""

from __future__ import annotations

import argparse
import sys

from soundry.config import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(args.config, finalize=False, data_dir=args.data_dir)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def add(args: argparse.Namespace) -> int:
    from soundry.models.errors import CheckpointError, ModelNotAvailable
    from soundry.models.sources.added import add as add_model
    from soundry.models.sources.added import describe

    settings = _settings(args)
    try:
        model = add_model(settings.data_dir, args.name, args.source, args.adapter, args.family)
    except (ValueError, ModelNotAvailable, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = describe(model)
    extra = f" + adapter {model.adapter}" if model.adapter else ""
    print(f"added {model.name}: {info['format']} format, {_size(info['size_bytes'])}, from {model.source}{extra}")
    print(f"  recorded in {settings.data_dir / 'models.json'}; `soundry serve` and `soundry worker` load it "
          f"(requests name it with \"model\": \"{model.name}\")")
    return 0


def remove(args: argparse.Namespace) -> int:
    from soundry.models.sources.added import remove as remove_model

    settings = _settings(args)
    if not remove_model(settings.data_dir, args.name):
        print(f"error: no model {args.name!r} in {settings.data_dir / 'models.json'}", file=sys.stderr)
        return 1
    print(f"removed {args.name} (its files stay where they are)")
    return 0


def pull(args: argparse.Namespace) -> int:
    """Download a model's files (and its adapter's) into the Hugging Face cache; a Stability-layout release is
    converted to diffusers' layout then (the folder printed is the converted one)."""
    from soundry.models.errors import CheckpointError, ModelNotAvailable
    from soundry.models.sources.added import open_catalog
    from soundry.models.sources.hub import fetch
    from soundry.models.sources.paths import resolve_model_dir

    settings = _settings(args)
    try:
        names = open_catalog(settings.data_dir, settings.model_paths)
        path = resolve_model_dir(args.name, download=True)
        spec = names.find(args.name)
        if spec is not None and spec.adapter:
            print(f"{args.name} adapter: {fetch(spec.adapter, download=True, kind='adapter')}")
    except (ModelNotAvailable, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: {path}")
    return 0


def list_local(args: argparse.Namespace) -> int:
    """Built-in models and where their weights are, then the added ones with their details."""
    from soundry.models.catalog import ALIASES, BUILTINS
    from soundry.models.errors import ModelNotAvailable
    from soundry.models.sources.added import describe, user_models
    from soundry.models.sources.paths import resolve_model_dir

    settings = _settings(args)
    try:
        added = user_models(settings.data_dir, settings.model_paths)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in [*ALIASES, *(s.name for s in BUILTINS)]:
        if name in added:
            continue
        try:
            where = str(resolve_model_dir(name, download=False))
        except ModelNotAvailable:
            where = "not downloaded (soundry models pull " + name + ")"
        print(f"{name:<17} {where}")
    for m in added.values():
        d = describe(m)
        print(f"{m.name:<17} {d['source']}" + (f" + LoRA adapter {d['adapter']}" if d["adapter"] else ""))
        print(f"{'':<17}   format {d['format'] or 'unknown (not here)'}, revision {d['revision'] or '-'}, "
              f"size {_size(d['size_bytes'])}, licence {d['license'] or '-'}, family {d['family']}, "
              f"weights {'here' if d['here'] else 'not here (downloaded on first load)'}, from {d['origin']}")
    return 0
