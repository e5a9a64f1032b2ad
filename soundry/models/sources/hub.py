"""Where a model's files come from: a local folder, or a Hugging Face hub reference ``hf:owner/repo@revision``.

A hub reference is fetched with ``huggingface_hub`` into its cache (progress bars on stderr), only the files
the detected format needs: the audiocraft release files, or a transformers-format checkpoint's config,
safetensors, tokenizer and card, or a PEFT adapter's two files. Once cached it loads offline. ``pin`` turns a
branch or tag into the commit it names, so what a model list reports is what runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from soundry.models.errors import ModelNotAvailable

HUB = "hf:"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
AUDIOCRAFT_FILES = ["state_dict.bin", "compression_state_dict.bin"]
TRANSFORMERS_FILES = ["config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
                      "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "spiece.model",
                      "special_tokens_map.json", "preprocessor_config.json"]  # the last: a melody model's chroma
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]
CARD = ["README.md"]


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return HUB + self.repo + (f"@{self.revision}" if self.revision else "")


def is_hub(source: str) -> bool:
    return str(source).startswith(HUB)


def parse_hub(source: str) -> HubRef:
    """``hf:owner/repo`` or ``hf:owner/repo@revision`` (a branch, tag or commit)."""
    repo, _, revision = str(source)[len(HUB):].partition("@")
    if not _REPO.match(repo) or (revision == "" and "@" in source):
        raise ValueError(f"{source!r} is not a hub reference such as hf:owner/repo@revision")
    return HubRef(repo, revision or None)


def _hub_error(ref: HubRef, exc: Exception) -> ModelNotAvailable:
    """One sentence naming why a hub request failed."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return ModelNotAvailable(f"{ref} is gated on the Hugging Face hub: accept its terms there and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotAvailable(f"{ref}: no such repository on the Hugging Face hub (a private one needs HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotAvailable(f"{ref}: the repository has no revision {ref.revision!r}")
    return ModelNotAvailable(f"cannot reach the Hugging Face hub for {ref} ({type(exc).__name__}); once its files "
                             "are in the local cache it loads offline, or give a local folder instead")


def pin(source: str) -> str:
    """A hub reference with its revision resolved to a commit (a local folder: its absolute path)."""
    if not is_hub(source):
        return str(Path(source).expanduser().resolve())
    ref = parse_hub(source)
    if ref.revision and _COMMIT.match(ref.revision):
        return str(ref)
    from huggingface_hub import HfApi

    try:
        sha = HfApi().model_info(ref.repo, revision=ref.revision).sha
    except Exception as exc:
        raise _hub_error(ref, exc) from exc
    return str(HubRef(ref.repo, sha))


def patterns_for(files: list[str], ref: HubRef | str, kind: str = "model") -> list[str]:
    """The files to download from a repository listing ``files``, by the layout they show; refuses a layout
    soundry does not serve with a sentence."""
    names = set(files)
    if kind == "adapter":
        if "adapter_config.json" not in names:
            raise ModelNotAvailable(f"{ref} has no adapter_config.json: not a PEFT adapter")
        if "adapter_model.safetensors" not in names:
            raise ModelNotAvailable(f"{ref} has no adapter_model.safetensors: soundry reads adapters from "
                                    "safetensors only (a .bin file is a pickle that can run code)")
        return ADAPTER_FILES + CARD
    if all(f in names for f in AUDIOCRAFT_FILES):
        return AUDIOCRAFT_FILES + CARD
    if "config.json" in names:
        if "model.safetensors" in names or "model.safetensors.index.json" in names:
            return TRANSFORMERS_FILES + CARD
        if any(f.startswith("pytorch_model") and f.endswith(".bin") for f in names):
            raise ModelNotAvailable(f"{ref} has its weights only as pytorch_model.bin: soundry reads "
                                    "transformers-format weights from safetensors only (a .bin file is a pickle "
                                    "that can run code)")
        raise ModelNotAvailable(f"{ref} has config.json but no model.safetensors")
    if "adapter_config.json" in names:
        raise ModelNotAvailable(f"{ref} is an adapter: give a base model as the source and this one with --adapter")
    raise ModelNotAvailable(f"{ref} holds neither an audiocraft release (state_dict.bin) nor a transformers-format "
                            "MusicGen (config.json + model.safetensors)")


def _has_layout(path: Path, kind: str) -> bool:
    if kind == "adapter":
        return (path / "adapter_config.json").is_file()
    return all((path / f).is_file() for f in AUDIOCRAFT_FILES) or (path / "config.json").is_file()


def fetch(source: str, download: bool = True, kind: str = "model") -> Path:
    """The local folder of a source: a folder as it is; a hub reference from the cache, else downloaded
    (``download``) with progress bars."""
    if not is_hub(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ModelNotAvailable(f"{kind} folder {path} does not exist")
        return path
    from huggingface_hub import HfApi, snapshot_download

    ref = parse_hub(source)
    try:
        cached = Path(snapshot_download(ref.repo, revision=ref.revision, local_files_only=True))
        if _has_layout(cached, kind):
            return cached
    except Exception:  # not (fully) in the cache
        pass
    if not download:
        raise ModelNotAvailable(f"the files of {ref} are not in the local cache (soundry models pull NAME "
                                "fetches them)")
    try:
        files = HfApi().list_repo_files(ref.repo, revision=ref.revision)
    except Exception as exc:
        raise _hub_error(ref, exc) from exc
    patterns = patterns_for(files, ref, kind)
    try:
        return Path(snapshot_download(ref.repo, revision=ref.revision, allow_patterns=patterns))
    except Exception as exc:
        raise _hub_error(ref, exc) from exc


def snapshot_revision(path: Path) -> str | None:
    """The commit a hub cache snapshot folder holds (its name), None for any other folder."""
    path = Path(path)
    return path.name if path.parent.name == "snapshots" and _COMMIT.match(path.name) else None


def card_license(path: Path) -> str | None:
    """The ``license:`` field of a model card's YAML front matter (README.md), when present."""
    card = Path(path) / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    import yaml

    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (yaml.YAMLError, IndexError):
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return None if value is None else str(value)


def folder_bytes(path: Path) -> int:
    """Bytes of the files in a folder (through the hub cache's links), not its subfolders' caches."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and ".cache" not in f.parts)
