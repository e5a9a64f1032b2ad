"""Models an operator adds: ``soundry models add NAME SOURCE [--adapter SOURCE] [--family ...]`` records one
in ``DATA_DIR/models.json``; ``model_paths`` entries (``SOUNDRY_MODEL_PATHS`` or soundry.toml) name more.
``register_user_models`` makes them known to every API (``serve`` and ``worker`` call it at start).

A source is a folder or ``hf:owner/repo@revision``, in the audiocraft release format or the transformers
format (detected from its files). ``add`` fetches it (a download shows progress), checks that soundry can
serve it and records the hub revision as the commit it resolved to.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from soundry.models import registry
from soundry.models.registry import FAMILY_WINDOWS, ModelNotAvailable, ModelSpec

RECORDS = "models.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class UserModel:
    name: str
    source: str
    adapter: str = ""
    family: str = "musicgen"
    added_at: str = ""
    origin: str = "data directory"  # or "model_paths"


def check_name(name: str) -> str:
    name = name.strip().lower()
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r}: use lowercase letters, digits, '.', '_' and '-' (at most 64)")
    if name in registry.ALIASES or (name in registry.SPECS and not registry.SPECS[name].source):
        raise ValueError(f"{name!r} is a built-in model's name; pick another (or point it elsewhere with "
                         "SOUNDRY_MODEL_PATHS)")
    return name


def read_records(data_dir: Path) -> dict[str, UserModel]:
    path = Path(data_dir) / RECORDS
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    return {name: UserModel(name=name, **{k: v for k, v in entry.items() if k in ("source", "adapter", "family",
                                                                               "added_at")})
            for name, entry in raw.get("models", {}).items()}


def write_records(data_dir: Path, models: dict[str, UserModel]) -> None:
    """Written whole to a temporary file, then renamed over the old one."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    body = {"models": {m.name: {"source": m.source, "adapter": m.adapter, "family": m.family,
                                "added_at": m.added_at} for m in models.values()}}
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".models-")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2)
    os.replace(tmp, data_dir / RECORDS)


def from_model_paths(entries: list[str]) -> dict[str, UserModel]:
    """``name=source`` entries (SOUNDRY_MODEL_PATHS / soundry.toml's model_paths) that name new models."""
    out = {}
    for entry in entries:
        if "=" not in entry:
            raise ValueError(f"model_paths entry {entry!r} must look like name=/path or name=hf:owner/repo@revision")
        name, source = (p.strip() for p in entry.split("=", 1))
        name = name.lower()
        if name in registry.ALIASES or (name in registry.SPECS and not registry.SPECS[name].source):
            continue  # a built-in name pointed at other files: registry.local_dir_for handles it
        out[name] = UserModel(check_name(name), source, origin="model_paths")
    return out


def _spec(m: UserModel) -> ModelSpec:
    kind = "hub" if m.source.startswith("hf:") else "folder"
    what = f"{m.family} from {kind} {m.source}" + (f" + LoRA adapter {m.adapter}" if m.adapter else "")
    channels, melody = _facts(m.source)
    return ModelSpec(m.name, m.source, m.family, what, channels=channels, source=m.source, adapter=m.adapter,
                     melody=melody)


def _facts(source: str) -> tuple[int, bool]:
    """(audio channels, whether it takes a melody) as the checkpoint here says — a folder, or a hub reference
    already in the cache, in either format; (1, False) when it cannot be read here."""
    from soundry.models.checkpoint import CheckpointError, load_package, parse_cfg
    from soundry.models.sources import fetch

    try:
        path = fetch(source, download=False)
        if (path / "config.json").is_file():  # transformers format
            cfg = json.loads((path / "config.json").read_text())
            return int(cfg["decoder"].get("audio_channels", 1)), cfg.get("model_type") == "musicgen_melody"
        cfg = parse_cfg(load_package(path / "state_dict.bin", mmap=True), path / "state_dict.bin")
        return int(cfg.get("channels", 1)), "self_wav" in ((cfg.get("fuser") or {}).get("prepend") or ())
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ModelNotAvailable, CheckpointError):
        return 1, False


def user_models(data_dir: Path, model_paths: list[str] | None = None) -> dict[str, UserModel]:
    models = read_records(data_dir)
    models.update(from_model_paths(model_paths or []))
    return models


def register_user_models(data_dir: Path, model_paths: list[str] | None = None) -> list[str]:
    """Make the recorded and configured models known to the APIs; returns their names."""
    models = user_models(data_dir, model_paths)
    for m in models.values():
        registry.register(_spec(m))
    return list(models)


def add(data_dir: Path, name: str, source: str, adapter: str | None = None, family: str = "musicgen") -> UserModel:
    """Fetch, check and record a model (see the module docstring). Raises ValueError / ModelNotAvailable /
    CheckpointError with a sentence."""
    from soundry.models.hf_format import is_transformers_dir, read_config, weight_files
    from soundry.models.sources import fetch, pin

    name = check_name(name)
    if family not in FAMILY_WINDOWS:
        raise ValueError(f"family {family!r}: choose one of {', '.join(FAMILY_WINDOWS)}")
    source = pin(source)
    path = fetch(source, download=True)
    from soundry.models.registry import _check_release_dir

    if (path / "adapter_config.json").is_file() and not is_transformers_dir(path):
        raise ValueError(f"{source} is a PEFT adapter: give its base model as SOURCE and this with --adapter")
    _check_release_dir(path)
    if is_transformers_dir(path):
        read_config(path)  # refuses the layouts soundry does not serve, with a sentence
        weight_files(path)  # refuses pytorch_model.bin
    adapter_source = ""
    if adapter:
        if not is_transformers_dir(path):
            raise ValueError(f"{source} is in audiocraft's release format; LoRA adapters are merged into "
                             "transformers-format bases")
        adapter_source = pin(adapter)
        fetch(adapter_source, download=True, kind="adapter")
    model = UserModel(name, source, adapter_source, family, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"))
    models = read_records(data_dir)
    models[name] = model
    write_records(data_dir, models)
    registry.register(_spec(model))
    return model


def remove(data_dir: Path, name: str) -> bool:
    models = read_records(data_dir)
    if models.pop(name.strip().lower(), None) is None:
        return False
    write_records(data_dir, models)
    return True


def describe(m: UserModel) -> dict:
    """What ``soundry models list`` shows of a model: source, format, revision, size, licence, whether its
    weights are here."""
    from soundry.models.hf_format import is_transformers_dir
    from soundry.models.sources import card_license, fetch, folder_bytes, is_hub, parse_hub, snapshot_revision

    info = {"name": m.name, "source": m.source, "adapter": m.adapter or None, "family": m.family,
            "revision": parse_hub(m.source).revision if is_hub(m.source) else None, "format": None,
            "size_bytes": None, "license": None, "here": False, "origin": m.origin}
    try:
        path = fetch(m.source, download=False)
    except (ModelNotAvailable, ValueError):
        return info
    info["here"] = True
    info["revision"] = snapshot_revision(path) or info["revision"]
    info["format"] = "transformers" if is_transformers_dir(path) else "audiocraft"
    info["size_bytes"] = folder_bytes(path)
    info["license"] = card_license(path)
    if m.adapter:
        try:
            fetch(m.adapter, download=False, kind="adapter")
        except (ModelNotAvailable, ValueError):
            info["here"] = False
    return info
