"""Models an operator adds: ``soundry models add NAME SOURCE [--adapter SOURCE] [--family ...]`` records one
in ``DATA_DIR/models.json`` (``soundry.models.catalog``), with the facts read from its checkpoint then
(channels, melody, licence); ``model_paths`` entries (``SOUNDRY_MODEL_PATHS`` or soundry.toml) name more.
``open_catalog`` builds the process's catalog from both (``serve``, ``worker`` and the CLI call it at start).

A source is a folder or ``hf:owner/repo@revision``, in the audiocraft release format, the transformers
format, diffusers' pipeline layout (Stable Audio Open / Stable Audio 3) or Stability's own layout
(``model_config.json`` + ``model.safetensors``, converted to diffusers' layout when added) — detected from its
files. ``add`` fetches it (a download shows progress), checks that soundry can serve it and records the hub revision
as the commit it resolved to. A Stable Audio model's family, channels, rate, longest clip and defaults are read from
its folder's configs (``--family`` is then not needed), its licence from its card.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from soundry.models import catalog
from soundry.models.catalog import FAMILIES, AddedModel, Catalog, read_records, write_records
from soundry.models.errors import CheckpointError, ModelNotAvailable

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
UserModel = AddedModel  # the name ``soundry models`` and older code use


def check_name(name: str) -> str:
    name = name.strip().lower()
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r}: use lowercase letters, digits, '.', '_' and '-' (at most 64)")
    if name in catalog.BUILTIN_NAMES:
        raise ValueError(f"{name!r} is a built-in model's name; pick another (or point it elsewhere with "
                         "SOUNDRY_MODEL_PATHS)")
    return name


def from_model_paths(entries: list[str]) -> dict[str, AddedModel]:
    """``name=source`` entries (SOUNDRY_MODEL_PATHS / soundry.toml's model_paths) that name new models, with the
    facts their files give here."""
    out = {}
    for entry in entries:
        if "=" not in entry:
            raise ValueError(f"model_paths entry {entry!r} must look like name=/path or name=hf:owner/repo@revision")
        name, source = (p.strip() for p in entry.split("=", 1))
        name = name.lower()
        if name in catalog.BUILTIN_NAMES:
            continue  # a built-in name pointed at other files: sources.paths.local_dir_for handles it
        out[name] = _with_facts(AddedModel(check_name(name), source, origin="model_paths"))
    return out


def read_facts(source: str) -> tuple[int, bool, str]:
    """(audio channels, whether it takes a melody, licence) as the checkpoint says — a folder, or a hub
    reference in the cache, in either format. Raises ModelNotAvailable / CheckpointError / ValueError."""
    from soundry.models.sources.hub import fetch
    from soundry.models.sources.paths import check_model_dir

    return facts_at(check_model_dir(fetch(source, download=False), download=False))


def diffusion_facts(path: Path) -> dict | None:
    """A diffusers folder's facts (``stable_audio.loader.folder_facts``) and its card's licence; None for a folder
    of another layout."""
    from soundry.models.sources.hub import card_license
    from soundry.models.stable_audio.loader import folder_facts, is_diffusers_dir

    if not is_diffusers_dir(path):
        return None
    return {**folder_facts(path), "license": card_license(path) or ""}


def facts_at(path: Path) -> tuple[int, bool, str]:
    """The facts of the checkpoint in the folder ``path`` (see ``read_facts``)."""
    from soundry.models.audiocraft.checkpoint import load_package, parse_cfg
    from soundry.models.sources.hub import card_license

    licence = card_license(path) or ""
    if (facts := diffusion_facts(path)) is not None:
        return facts["channels"], False, licence
    try:
        if (path / "config.json").is_file():  # transformers format
            cfg = json.loads((path / "config.json").read_text())
            return (int(cfg["decoder"].get("audio_channels", 1)), cfg.get("model_type") == "musicgen_melody",
                    licence)
        cfg = parse_cfg(load_package(path / "state_dict.bin", mmap=True), path / "state_dict.bin")
        return int(cfg.get("channels", 1)), "self_wav" in ((cfg.get("fuser") or {}).get("prepend") or ()), licence
    except (OSError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"cannot read the facts of {path}: {exc}") from exc


def _with_facts(m: AddedModel) -> AddedModel:
    """``m`` with its checkpoint's facts; unchanged (and a warning) when its files cannot be read here."""
    from soundry.models.sources.hub import fetch
    from soundry.models.sources.paths import check_model_dir

    try:
        path = check_model_dir(fetch(m.source, download=False), download=False)
        if (facts := diffusion_facts(path)) is not None:
            return replace(m, **facts)
        channels, melody, licence = facts_at(path)
    except (ValueError, ModelNotAvailable, CheckpointError) as exc:
        log.warning("model %s: its checkpoint cannot be read here (%s); served as mono without melody until it "
                    "can", m.name, exc)
        return m
    return replace(m, channels=channels, melody=melody, license=licence)


def user_models(data_dir: Path, model_paths: list[str] | None = None) -> dict[str, AddedModel]:
    models = read_records(data_dir)
    models.update(from_model_paths(model_paths or []))
    return models


def record_missing_facts(data_dir: Path) -> None:
    """Records written before soundry recorded facts get them now, once, where the checkpoint is here."""
    records = read_records(data_dir)
    missing = {n: m for n, m in records.items() if m.channels is None}
    if not missing:
        return
    updated = {n: _with_facts(m) for n, m in missing.items()}
    if any(m.channels is not None for m in updated.values()):
        write_records(data_dir, {**records, **{n: m for n, m in updated.items() if m.channels is not None}})


def open_catalog(data_dir: Path, model_paths: list[str] | None = None) -> Catalog:
    """The catalog of a data directory and the configured model_paths, made the process's (``catalog.use``)."""
    record_missing_facts(data_dir)
    extra = {n: m.spec() for n, m in from_model_paths(model_paths or []).items()}
    return catalog.use(Catalog(Path(data_dir), extra))


def add(data_dir: Path, name: str, source: str, adapter: str | None = None, family: str = "musicgen") -> AddedModel:
    """Fetch, check and record a model with its facts (see the module docstring). Raises ValueError /
    ModelNotAvailable / CheckpointError with a sentence."""
    from soundry.models.audiocraft.formats.transformers import is_transformers_dir, read_config, weight_files
    from soundry.models.sources.hub import fetch, pin
    from soundry.models.sources.paths import check_model_dir

    name = check_name(name)
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: choose one of {', '.join(FAMILIES)}")
    source = pin(source)
    path = fetch(source, download=True)
    if (path / "adapter_config.json").is_file() and not is_transformers_dir(path):
        raise ValueError(f"{source} is a PEFT adapter: give its base model as SOURCE and this with --adapter")
    path = check_model_dir(path)  # Stability's layout comes back converted; other layouts checked
    if (facts := diffusion_facts(path)) is not None:  # Stable Audio: its folder says what it is
        if adapter:
            raise ValueError(f"{source} is a Stable Audio pipeline; soundry merges LoRA adapters into MusicGen only")
        load_check(path)
        model = AddedModel(name, source, "", added_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                           melody=False, **facts)
        models = read_records(data_dir)
        models[name] = model
        write_records(data_dir, models)
        return model
    if FAMILIES[family].kind == "diffusion":
        raise ValueError(f"{source} is not a diffusers pipeline folder (model_index.json) nor in Stability's layout "
                         f"(model_config.json + model.safetensors): it cannot be a {family} model")
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
    channels, melody, licence = facts_at(path)
    model = AddedModel(name, source, adapter_source, family, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                       channels=channels, melody=melody, license=licence)
    models = read_records(data_dir)
    models[name] = model
    write_records(data_dir, models)
    return model


def load_check(path: Path) -> None:
    """What the loader refuses in a diffusers folder (other classes, pickles, code, ``auto_map``), refused now."""
    from soundry.models.stable_audio.loader import check_files, read_index

    _pipeline, _kind, classes = read_index(path)
    check_files(path, list(classes))


def remove(data_dir: Path, name: str) -> bool:
    models = read_records(data_dir)
    if models.pop(name.strip().lower(), None) is None:
        return False
    write_records(data_dir, models)
    return True


def describe(m: AddedModel) -> dict:
    """What ``soundry models list`` shows of a model: source, format, revision, size, licence, whether its
    weights are here."""
    from soundry.models.audiocraft.formats.transformers import is_transformers_dir
    from soundry.models.sources.hub import card_license, fetch, folder_bytes, is_hub, parse_hub, snapshot_revision

    info = {"name": m.name, "source": m.source, "adapter": m.adapter or None, "family": m.family,
            "revision": parse_hub(m.source).revision if is_hub(m.source) else None, "format": None,
            "size_bytes": None, "license": m.license or None, "here": False, "origin": m.origin}
    try:
        path = fetch(m.source, download=False)
    except (ModelNotAvailable, ValueError):
        return info
    info["here"] = True
    info["revision"] = snapshot_revision(path) or info["revision"]
    from soundry.models.stable_audio.convert import is_stability_dir
    from soundry.models.stable_audio.loader import is_diffusers_dir

    info["format"] = ("diffusers" if is_diffusers_dir(path) else "stability (converted to diffusers on load)"
                      if is_stability_dir(path) else "transformers" if is_transformers_dir(path) else "audiocraft")
    info["size_bytes"] = folder_bytes(path)
    info["license"] = card_license(path) or info["license"]
    if m.adapter:
        try:
            fetch(m.adapter, download=False, kind="adapter")
        except (ModelNotAvailable, ValueError):
            info["here"] = False
    return info
