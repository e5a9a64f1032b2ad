"""Stable Audio weights (issue 29, "Models and weights"): the diffusers layout fetched by name and from
``hf:owner/repo@revision`` with only the files the loader reads; a gated repository answered with one sentence
(the CLI, the service's model-unavailable error, the API); a failed download leaving nothing behind; Stability's own
layout converted to diffusers' (a tiny checkpoint written in that layout reproduces the golden audio); and
``soundry models add`` of either layout.

Nothing here reaches the network: ``huggingface_hub``'s listing and downloads are replaced by a fake hub that
serves local folders through the real cache layout (blobs, snapshots, refs) under a temporary HF_HUB_CACHE.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import cache
from pathlib import Path

import httpx
import pytest
import torch

from soundry.engine.generate import generate
from soundry.models.errors import CheckpointError, ModelNotAvailable
from tests.conftest import wait_for
from tests.helpers_models import DATA
from tests.helpers_stability_layout import write_sa3_stability_layout, write_stability_layout

SAO, SA3 = DATA / "stable-audio-open-tiny", DATA / "stable-audio-3-tiny"
GATED = ("stabilityai/stable-audio-open-1.0 is gated: accept the Stability AI Community License at "
         "https://huggingface.co/stabilityai/stable-audio-open-1.0 and set HF_TOKEN to a token of that account")
SAO_REPO_LISTING = [  # stabilityai/stable-audio-open-1.0 holds both layouts (and, here, a few things never fetched)
    ".gitattributes", "LICENSE.md", "README.md", "model.ckpt", "model.safetensors", "model_config.json",
    "model_index.json", "projection_model/config.json", "projection_model/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin", "tokenizer/special_tokens_map.json", "tokenizer/spiece.model",
    "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin",
    "pipeline.py", "stable_audio_open.png"]


# -- a fake hub over the real cache layout ---------------------------------------------------------------------
class FakeHub:
    """``HfApi.list_repo_files`` / ``model_info``, ``snapshot_download`` and ``hf_hub_download`` over local folders
    (repo → folder), writing what a download fetches into ``cache_dir`` (or HF_HUB_CACHE) as huggingface_hub does.
    ``fail_after`` makes the next download write that many files, then raise; ``gated`` repos raise
    GatedRepoError from every call."""

    def __init__(self, repos: dict[str, Path], cache_root: Path):
        self.repos, self.cache_root = repos, cache_root
        self.gated: set[str] = set()
        self.fail_after: int | None = None
        self.downloads: list[tuple[str, list[str]]] = []

    @staticmethod
    def sha(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def _check(self, repo: str) -> None:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo}")
        if repo in self.gated:
            raise GatedRepoError(f"401 Client Error: access to model {repo} is restricted",
                                 response=httpx.Response(401, request=request))
        if repo not in self.repos:
            raise RepositoryNotFoundError("404", response=httpx.Response(404, request=request))

    def files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())

    def list_repo_files(self, repo, revision=None, **_):
        self._check(repo)
        return self.files(repo)

    def model_info(self, repo, revision=None, **_):
        self._check(repo)
        return type("Info", (), {"sha": self.sha(repo)})()

    def snapshot_download(self, repo, revision=None, allow_patterns=None, cache_dir=None, local_files_only=False,
                          **_):
        from huggingface_hub.errors import LocalEntryNotFoundError

        repo_dir = Path(cache_dir or self.cache_root) / f"models--{repo.replace('/', '--')}"
        if local_files_only:
            ref = repo_dir / "refs" / (revision or "main")
            sha = revision if revision and len(revision) == 40 else (ref.read_text() if ref.is_file() else None)
            if sha is None or not (repo_dir / "snapshots" / sha).is_dir():
                raise LocalEntryNotFoundError("not in the cache")
            return str(repo_dir / "snapshots" / sha)
        self._check(repo)
        wanted = [f for f in self.files(repo) if f in (allow_patterns or [])]
        self.downloads.append((repo, wanted))
        sha = self.sha(repo)
        snap = repo_dir / "snapshots" / sha
        for n, name in enumerate(wanted):
            if self.fail_after is not None and n == self.fail_after:
                self.fail_after = None
                (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
                (repo_dir / "blobs" / "deadbeef.incomplete").write_bytes(b"half")
                raise httpx.ReadTimeout("the connection broke")
            data = (self.repos[repo] / name).read_bytes()
            blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snap / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(os.path.relpath(blob, link.parent))
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / (revision if revision and len(revision) != 40 else "main")).write_text(sha)
        return str(snap)

    def hf_hub_download(self, repo, filename, revision=None, local_dir=None, **_):
        self._check(repo)
        target = Path(local_dir) / filename
        shutil.copyfile(self.repos[repo] / filename, target)
        return str(target)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    cache_root = tmp_path / "hf-cache"
    cache_root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_root))
    monkeypatch.setenv("SOUNDRY_CONVERTED_DIR", str(tmp_path / "converted"))
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", "")
    fake = FakeHub({}, cache_root)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", fake.list_repo_files)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake.model_info)
    return fake


def _files(root: Path) -> set[str]:
    return {str(f.relative_to(root)) for f in root.rglob("*") if f.is_file() or f.is_symlink()}


@cache
def stability_tiny(root: str) -> Path:
    """The tiny SAO pipeline written in Stability's layout (tests/helpers_stability_layout.py), once per session."""
    return write_stability_layout(SAO, Path(root) / "sao-stability")


@pytest.fixture(scope="session")
def stability_dir(tmp_path_factory) -> Path:
    return stability_tiny(str(tmp_path_factory.mktemp("stability")))


@cache
def golden():
    return torch.load(SAO / "stable_audio_golden.pt", weights_only=True)


@cache
def sa3_stability_tiny(root: str, text_beside: bool) -> Path:
    """The tiny SA3 pipeline in Stability-AI/stable-audio-3's layout (tests/helpers_stability_layout.py): with the
    T5Gemma's folders beside it, or without (then it comes from the hub's google/t5gemma-b-b-ul2)."""
    return write_sa3_stability_layout(SA3, Path(root) / ("sa3-stability" + ("" if text_beside else "-bare")),
                                      text_beside=text_beside)


@pytest.fixture(scope="session")
def sa3_stability_dir(tmp_path_factory) -> Path:
    return sa3_stability_tiny(str(tmp_path_factory.mktemp("sa3-stability")), True)


@pytest.fixture(scope="session")
def sa3_stability_bare(tmp_path_factory) -> Path:
    return sa3_stability_tiny(str(tmp_path_factory.mktemp("sa3-stability")), False)


@cache
def sa3_golden():
    return torch.load(SA3 / "stable_audio_golden.pt", weights_only=True)


def t5gemma_repo(root: Path) -> Path:
    """google/t5gemma-b-b-ul2 as the fake hub serves it: transformers' layout (here the tiny's T5Gemma encoder)."""
    repo = root / "t5gemma"
    repo.mkdir(exist_ok=True)
    for f in [*(SA3 / "text_encoder").iterdir(), *(SA3 / "tokenizer").iterdir()]:
        shutil.copyfile(f, repo / f.name)
    return repo


def assert_sa3_golden(model, cases=None):
    g = sa3_golden()
    for i in cases if cases is not None else range(len(g["prompts"])):
        audio = generate(model, [g["prompts"][i]], duration=g["durations"][i], seed=g["seeds"][i],
                         cfg_coef=g["guidance_scales"][i], steps=g["steps"][i],
                         negative_prompts=[g["negative_prompts"][i]]).audio[0]
        assert audio.shape == g["audio"][i].shape, i
        assert (audio - g["audio"][i]).abs().max() <= 1e-4 * g["audio"][i].abs().max(), i


# -- 1. which files a hub repository gives ---------------------------------------------------------------------
def test_the_diffusers_layout_is_fetched_without_pickles_code_variants_or_stabilitys_copy():
    from soundry.models.sources.hub import patterns_for

    files = patterns_for(SAO_REPO_LISTING, "hf:stabilityai/stable-audio-open-1.0")
    assert set(files) == {
        "model_index.json", "README.md", "LICENSE.md", "projection_model/config.json",
        "projection_model/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/special_tokens_map.json",
        "tokenizer/spiece.model", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors"}
    sharded = ["model_index.json", "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
               "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors"]
    assert set(patterns_for(sharded, "hf:x/y")) == set(sharded)
    with pytest.raises(ModelNotAvailable, match="the vae folder has no plain safetensors weights .only "
                                                "diffusion_pytorch_model.bin: a pickle"):
        patterns_for(["model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.bin"], "hf:x/y")


def test_stabilitys_layout_is_fetched_as_its_config_and_safetensors_only():
    from soundry.models.sources.hub import patterns_for

    sa3 = ["README.md", "LICENSE.md", "model_config.json", "model.safetensors", "model.ckpt", "demo.py"]
    assert set(patterns_for(sa3, "hf:stabilityai/stable-audio-3-small-sfx")) == {
        "model_config.json", "model.safetensors", "README.md", "LICENSE.md"}
    with pytest.raises(ModelNotAvailable, match="no model.safetensors .only model.ckpt: a pickle"):
        patterns_for(["model_config.json", "model.ckpt"], "hf:x/y")


# -- 2. gated repositories ------------------------------------------------------------------------------------
def test_a_gated_repo_answers_one_sentence_through_fetch_and_the_cli(hub, tmp_path, capsys):
    from soundry.cli.main import main
    from soundry.models.sources.hub import fetch

    hub.repos["stabilityai/stable-audio-open-1.0"] = SAO
    hub.gated.add("stabilityai/stable-audio-open-1.0")
    with pytest.raises(ModelNotAvailable) as err:
        fetch("hf:stabilityai/stable-audio-open-1.0")
    assert str(err.value) == GATED
    args = ["--config", str(tmp_path / "none.toml"), "--data-dir", str(tmp_path / "data")]
    assert main(["models", "pull", "stable-audio-open", *args]) == 1
    assert capsys.readouterr().err.strip() == f"error: {GATED}"
    assert not hub.downloads and not list((tmp_path / "hf-cache").iterdir())


def test_a_gated_repo_fails_the_task_with_the_sentence(hub, client, user):
    hub.repos["stabilityai/stable-audio-open-1.0"] = SAO
    hub.gated.add("stabilityai/stable-audio-open-1.0")
    body = {"prompt": "rain", "configs": {"model": "stable-audio-open", "duration": 1}}
    created = client.post("/v1/ai/audio_generation", json=body, headers=user["headers"])
    assert created.status_code == 201, created.text
    result = wait_for(client, created.json()["data"]["task_id"], user["headers"])
    assert result["status"] == "FAILED"
    assert result["error_description"] == f"model stable-audio-open could not be loaded: {GATED}"


# -- 3. nothing half-downloaded -------------------------------------------------------------------------------
def test_a_broken_download_leaves_nothing_and_the_next_one_downloads_again(hub, tmp_path):
    from soundry.models.sources.hub import fetch

    cache_root = tmp_path / "hf-cache"
    hub.repos["someone/sfx"] = SAO
    hub.fail_after = 3
    with pytest.raises(ModelNotAvailable, match="cannot reach the Hugging Face hub for hf:someone/sfx"):
        fetch("hf:someone/sfx")
    assert len(hub.downloads) == 1 and _files(cache_root) == set()  # no snapshot, no blob, no .incomplete
    with pytest.raises(ModelNotAvailable, match="not in the local cache"):
        fetch("hf:someone/sfx", download=False)
    path = fetch("hf:someone/sfx")
    assert len(hub.downloads) == 2
    assert path == cache_root / "models--someone--sfx" / "snapshots" / hub.sha("someone/sfx")
    assert (path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert not any(p.name.startswith(".soundry-staging") for p in cache_root.iterdir())
    assert fetch("hf:someone/sfx", download=False) == path and len(hub.downloads) == 2  # cached now


def test_an_audiocraft_release_is_staged_too(hub, tmp_path):
    """A built-in audiocraft name downloads its release the same way: a broken download leaves nothing behind."""
    from soundry.models.sources.paths import resolve_model_dir

    cache_root = tmp_path / "hf-cache"
    hub.repos["facebook/musicgen-small"] = DATA / "musicgen-tiny"
    hub.fail_after = 1
    with pytest.raises(ModelNotAvailable, match="weights for musicgen-small not found locally: cannot reach the "
                                                "Hugging Face hub for hf:facebook/musicgen-small"):
        resolve_model_dir("musicgen-small")
    assert _files(cache_root) == set()
    path = resolve_model_dir("musicgen-small")
    assert path == cache_root / "models--facebook--musicgen-small" / "snapshots" / hub.sha("facebook/musicgen-small")
    assert _files(path) == {"state_dict.bin", "compression_state_dict.bin"}
    assert set(hub.downloads[-1][1]) == {"state_dict.bin", "compression_state_dict.bin"}
    assert not any(p.name.startswith(".soundry-staging") for p in cache_root.iterdir())


def test_a_pipeline_missing_a_component_in_the_cache_is_downloaded_again(hub, tmp_path):
    from soundry.models import load_model
    from soundry.models.sources.hub import fetch

    hub.repos["someone/sfx"] = SAO
    path = fetch("hf:someone/sfx")
    model = load_model(f"hf:someone/sfx@{hub.sha('someone/sfx')}", device="cpu")  # a hub reference loads as is
    assert model.source == path and len(hub.downloads) == 1
    (path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    fetch("hf:someone/sfx")
    assert len(hub.downloads) == 2 and (path / "vae" / "diffusion_pytorch_model.safetensors").is_file()


# -- 1. by name and from hf: ----------------------------------------------------------------------------------
def test_a_built_in_name_downloads_its_diffusers_folder_and_loads(hub, tmp_path, capsys):
    from soundry.cli.main import main
    from soundry.models import load_model

    hub.repos["stabilityai/stable-audio-open-1.0"] = SAO
    args = ["--config", str(tmp_path / "none.toml"), "--data-dir", str(tmp_path / "data")]
    assert main(["models", "pull", "stable-audio-open", *args]) == 0
    snapshot = tmp_path / "hf-cache" / "models--stabilityai--stable-audio-open-1.0" / "snapshots" / hub.sha(
        "stabilityai/stable-audio-open-1.0")
    assert capsys.readouterr().out.strip() == f"stable-audio-open: {snapshot}"
    fetched = hub.downloads[-1][1]
    assert "model_index.json" in fetched and not any(f.endswith((".pt", ".json.bak")) for f in fetched)
    assert not any("golden" in f for f in fetched)  # only what the loader reads
    model = load_model("stable-audio-open", device="cpu")
    assert model.name == "stable-audio-open" and model.sample_rate == 8000 and len(hub.downloads) == 1


def test_an_hf_reference_in_stabilitys_layout_is_converted_and_loads(hub, stability_dir, tmp_path, monkeypatch):
    """Stability's layout holds no T5: the one its model_config.json names comes from the hub (google-t5/...),
    in transformers' layout, safetensors only (here: the tiny T5 under that name)."""
    from soundry.models import load_model
    from soundry.models.sources.paths import resolve_model_dir

    t5 = tmp_path / "t5"
    t5.mkdir()
    for f in [*(SAO / "text_encoder").iterdir(), *(SAO / "tokenizer").iterdir()]:
        shutil.copyfile(f, t5 / f.name)
    hub.repos["google-t5/t5-base"] = t5
    hub.repos["someone/sao-stability"] = stability_dir
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"mysfx=hf:someone/sao-stability@{hub.sha('someone/sao-stability')}")
    folder = resolve_model_dir("mysfx")
    assert folder.parent == tmp_path / "converted" and (folder / "model_index.json").is_file()
    assert [repo for repo, _ in hub.downloads] == ["someone/sao-stability", "google-t5/t5-base"]
    assert set(hub.downloads[0][1]) == {"model_config.json", "model.safetensors", "README.md"}
    assert _files(folder / "tokenizer") == {"tokenizer.json", "tokenizer_config.json"}
    assert _files(folder / "text_encoder") == {"config.json", "model.safetensors"}
    assert resolve_model_dir("mysfx") == folder and len(hub.downloads) == 2  # converted once
    model = load_model("mysfx", device="cpu")
    assert model.family == "stable-audio-open" and model.sample_rate == 8000
    g = golden()
    audio = generate(model, [g["prompts"][0]], duration=g["durations"][0], seed=g["seeds"][0],
                     cfg_coef=g["guidance_scales"][0], steps=g["steps"][0]).audio[0]
    assert (audio - g["audio"][0]).abs().max() <= 1e-4 * g["audio"][0].abs().max()


# -- 3. Stability's layout converted --------------------------------------------------------------------------
def test_stabilitys_layout_converts_to_the_same_weights_and_reproduces_the_golden_audio(stability_dir, tmp_path):
    from safetensors.torch import load_file

    from soundry.models import load_model
    from soundry.models.stable_audio.convert import convert_stability_dir

    out = convert_stability_dir(stability_dir, tmp_path / "converted")
    assert {f.suffix for f in out.rglob("*") if f.is_file()} <= {".json", ".safetensors", ".md"}
    for part in ("transformer", "vae", "projection_model"):
        name = "diffusion_pytorch_model.safetensors"
        want, got = load_file(SAO / part / name), load_file(out / part / name)
        assert set(got) == set(want), part
        assert all(torch.equal(got[k], want[k]) for k in want), part
    for part in ("transformer", "vae", "projection_model", "scheduler"):
        config = "scheduler_config.json" if part == "scheduler" else "config.json"
        want = {k: v for k, v in json.loads((SAO / part / config).read_text()).items() if k != "_diffusers_version"}
        got = {k: v for k, v in json.loads((out / part / config).read_text()).items() if k != "_diffusers_version"}
        assert got == want, part
    model, g = load_model(str(out), device="cpu"), golden()
    for i in range(len(g["prompts"])):
        audio = generate(model, [g["prompts"][i]], duration=g["durations"][i], seed=g["seeds"][i],
                         cfg_coef=g["guidance_scales"][i], steps=g["steps"][i],
                         negative_prompts=[g["negative_prompts"][i]]).audio[0]
        assert audio.shape == g["audio"][i].shape
        assert (audio - g["audio"][i]).abs().max() <= 1e-4 * g["audio"][i].abs().max(), i


def test_a_whole_t5_from_the_hub_is_kept_as_its_encoder(tmp_path):
    """google-t5/t5-base is published as T5ForConditionalGeneration: the converted folder keeps its encoder."""
    from safetensors.torch import load_file
    from transformers import T5Config, T5ForConditionalGeneration

    from soundry.models.stable_audio.convert import _copy_text_encoder

    config = T5Config.from_pretrained(str(SAO / "text_encoder"))
    config.architectures, config.is_encoder_decoder = ["T5ForConditionalGeneration"], True
    torch.manual_seed(0)
    full = T5ForConditionalGeneration(config)
    full.save_pretrained(str(tmp_path / "t5"), safe_serialization=True)
    _copy_text_encoder(tmp_path / "t5", tmp_path / "text_encoder")
    kept = load_file(tmp_path / "text_encoder" / "model.safetensors")
    assert kept and not any(k.startswith("decoder.") for k in kept)
    whole = full.state_dict()
    assert all(torch.equal(v, whole[k]) for k, v in kept.items())
    assert json.loads((tmp_path / "text_encoder" / "config.json").read_text())["architectures"] == ["T5EncoderModel"]


def test_a_config_or_checkpoint_the_converter_does_not_map_is_refused_with_a_sentence(stability_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from soundry.models.stable_audio.convert import convert_stability_dir

    sa3 = shutil.copytree(stability_dir, tmp_path / "sa3")
    cfg = json.loads((sa3 / "model_config.json").read_text())
    cfg["model"]["pretransform"]["config"]["encoder"]["type"] = "same"  # a SAME autoencoder under a T5 prompt
    (sa3 / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="describes model_type 'diffusion_cond', diffusion 'dit', autoencoder "
                                              "'same', text conditioner 't5': the autoencoder is not mapped"):
        convert_stability_dir(sa3, tmp_path / "out")
    lm = shutil.copytree(stability_dir, tmp_path / "lm")
    cfg = json.loads((lm / "model_config.json").read_text())
    cfg["model_type"] = "lm"
    (lm / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model type is not mapped"):
        convert_stability_dir(lm, tmp_path / "out")
    extra = shutil.copytree(stability_dir, tmp_path / "extra")
    sd = load_file(extra / "model.safetensors")
    sd["model.model.transformer.memory_tokens"] = torch.zeros(4, 32)
    save_file(sd, str(extra / "model.safetensors"))
    with pytest.raises(CheckpointError, match="DiT tensors soundry does not map.*memory_tokens"):
        convert_stability_dir(extra, tmp_path / "out")
    pickled = shutil.copytree(stability_dir, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "model.ckpt")
    with pytest.raises(CheckpointError, match="only model.ckpt: a pickle"):
        convert_stability_dir(pickled, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_an_unmapped_stability_repo_is_refused_before_its_weights_download(hub):
    from soundry.models.sources.hub import fetch

    repo = hub.repos["someone/sa3"] = Path(hub.cache_root.parent / "sa3-src")
    repo.mkdir()
    (repo / "model_config.json").write_text(json.dumps({"model_type": "diffusion_cond", "model": {
        "diffusion": {"type": "dit"}, "pretransform": {"type": "autoencoder", "config": {"encoder": {"type": "same"}}},
        "conditioning": {"configs": [{"id": "prompt", "type": "t5gemma"}]}}}))
    (repo / "model.safetensors").write_bytes(b"x" * 100)
    with pytest.raises(ModelNotAvailable, match="hf:someone/sa3's model_config.json describes .*: the diffusion "
                                                "objective 'v' is not mapped; soundry converts Stable Audio 3's"):
        fetch("hf:someone/sa3")
    assert not hub.downloads


# -- 3b. Stable Audio Open 1.0's own model_config.json -------------------------------------------------------------
# stabilityai/stable-audio-open-1.0's model_config.json, trimmed: every key it has (its ``training`` block cut down
# to one), nested as it nests them, with the tiny's numbers (the release's in the comments). Read from public copies
# of the file (yukara-ikemiya/friendly-stable-audio-tools, stable_audio_tools/configs/model_configs/txt2audio/
# stable_audio_open_1_0.json; the same values in others), checked against Stability-AI/stable-audio-tools' loader.
SAO_1_0_TRIMMED = {
    "model_type": "diffusion_cond",
    "sample_size": 640,  # 2097152
    "sample_rate": 8000,  # 44100
    "audio_channels": 2,
    "model": {
        "pretransform": {
            "type": "autoencoder",
            "iterate_batch": True,
            "config": {
                "encoder": {"type": "oobleck", "config": {
                    "in_channels": 2, "channels": 8, "c_mults": [1, 2, 4], "strides": [2, 4, 2],  # 128, [1,2,4,8,16],
                    "latent_dim": 8, "use_snake": True}},  # [2,4,4,8,8], 128
                "decoder": {"type": "oobleck", "config": {
                    "out_channels": 2, "channels": 8, "c_mults": [1, 2, 4], "strides": [2, 4, 2],
                    "latent_dim": 4, "use_snake": True, "final_tanh": False}},  # 64
                "bottleneck": {"type": "vae"},
                "latent_dim": 4,  # 64
                "downsampling_ratio": 16,  # 2048
                "io_channels": 2}},
        "conditioning": {
            "configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 32}},  # 128
                {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 1}},  # 0, 512
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 1}}],
            "cond_dim": 24},  # 768
        "diffusion": {
            "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
            "global_cond_ids": ["seconds_start", "seconds_total"],
            "type": "dit",
            "config": {"io_channels": 4, "embed_dim": 48, "depth": 2, "num_heads": 4,  # 64, 1536, 24, 24
                       "cond_token_dim": 24, "global_cond_dim": 48,  # 768, 1536
                       "project_cond_tokens": False, "transformer_type": "continuous_transformer"}},
        "io_channels": 4},  # 64
    "training": {"use_ema": True},
}


def _keys(node, at="") -> set[str]:
    """Every key path of a JSON tree (conditioners by id)."""
    if isinstance(node, dict):
        return {p for k, v in node.items() for p in {f"{at}.{k}"} | _keys(v, f"{at}.{k}")}
    if isinstance(node, list) and node and all(isinstance(c, dict) and "id" in c for c in node):
        return {p for c in node for p in _keys(c, f"{at}[{c['id']}]")}
    return set()


@cache
def sao_shaped(root: str) -> tuple[Path, Path]:
    """The tiny SAO pipeline with a DiT shaped as the release's is (the prompt's tokens not projected: cross-attention
    keys as wide as cond_dim, fewer key/value heads than heads), and that pipeline in Stability's layout."""
    from diffusers import StableAudioDiTModel

    folder = shutil.copytree(SAO, Path(root) / "sao-shaped", ignore=shutil.ignore_patterns("*golden*"))
    shutil.rmtree(folder / "transformer")
    torch.manual_seed(0)
    net = StableAudioDiTModel(sample_size=40, in_channels=4, num_layers=2, attention_head_dim=12, num_attention_heads=4,
                              num_key_value_attention_heads=2, out_channels=4, cross_attention_dim=24,
                              cross_attention_input_dim=24, global_states_input_dim=48, time_proj_dim=16)
    with torch.no_grad():
        for p in net.parameters():  # nothing left at its zero / one initialisation
            p.add_(0.05 * torch.randn_like(p))
    net.save_pretrained(str(folder / "transformer"), safe_serialization=True)
    return folder, write_stability_layout(folder, Path(root) / "sao-shaped-stability")


def test_the_helper_writes_stable_audio_open_1_0s_keys_and_nesting(stability_dir):
    cfg = json.loads((stability_dir / "model_config.json").read_text())
    assert _keys(cfg) == _keys(SAO_1_0_TRIMMED)
    assert cfg["model"]["diffusion"]["config"]["project_cond_tokens"] is True  # the tiny's DiT projects its tokens


def test_stable_audio_open_1_0s_own_config_converts_as_stable_audio_tools_builds_it(tmp_path):
    """The release's model_config.json (trimmed, tiny numbers) over a checkpoint shaped as the release's: the
    converted DiT is the source's (every tensor, its config), and makes the same audio."""
    from safetensors.torch import load_file

    from soundry.models import load_model
    from soundry.models.stable_audio.convert import convert_stability_dir

    source, stability = sao_shaped(str(tmp_path))
    written = json.loads((stability / "model_config.json").read_text())
    assert written["model"]["diffusion"]["config"]["project_cond_tokens"] is False
    (stability / "model_config.json").write_text(json.dumps(SAO_1_0_TRIMMED))
    out = convert_stability_dir(stability, tmp_path / "converted")
    for part in ("transformer", "vae", "projection_model"):
        name = "diffusion_pytorch_model.safetensors"
        want, got = load_file(source / part / name), load_file(out / part / name)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), part
        drop = {"_diffusers_version", "_name_or_path"}
        want = {k: v for k, v in json.loads((source / part / "config.json").read_text()).items() if k not in drop}
        got = {k: v for k, v in json.loads((out / part / "config.json").read_text()).items() if k not in drop}
        assert got == want, part
    assert json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 32
    a, b = (generate(load_model(str(f), device="cpu"), ["rain on a tin roof"], duration=0.05, seed=3, cfg_coef=3.0,
                     steps=4).audio[0] for f in (source, out))
    assert a.abs().max() > 0 and torch.equal(a, b)


def test_absent_keys_mean_stable_audio_tools_defaults(tmp_path):
    """What the release leaves out is read as stable-audio-tools' loader reads it: the T5's max_length 128; the
    conditioning ids none (refused), the Oobleck's use_snake false and final_tanh true (refused),
    project_cond_tokens true (refused over the release's unprojected tokens)."""
    from soundry.models.stable_audio.convert import check_config, convert_stability_dir

    _, stability = sao_shaped(str(tmp_path))

    def variant(name, edit):
        d = shutil.copytree(stability, tmp_path / name)
        cfg = json.loads(json.dumps(SAO_1_0_TRIMMED))
        edit(cfg)
        (d / "model_config.json").write_text(json.dumps(cfg))
        return d

    no_length = variant("no-length", lambda c: c["model"]["conditioning"]["configs"][0]["config"].pop("max_length"))
    out = convert_stability_dir(no_length, tmp_path / "out-length")
    assert json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 128
    projected = variant("projected", lambda c: c["model"]["diffusion"]["config"].pop("project_cond_tokens"))
    with pytest.raises(CheckpointError, match="model.diffusion.config.project_cond_tokens is True but the "
                                              "checkpoint's projection is 24 wide, not 48"):
        convert_stability_dir(projected, tmp_path / "out")
    deeper = variant("deeper", lambda c: c["model"]["diffusion"]["config"].pop("depth"))
    with pytest.raises(CheckpointError, match=r"model.diffusion.config.depth is 12 \(the default\) but the "
                                              "checkpoint's DiT has 2"):
        convert_stability_dir(deeper, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    def refused(edit, match):
        cfg = json.loads(json.dumps(SAO_1_0_TRIMMED))
        edit(cfg)
        with pytest.raises(CheckpointError, match=match):
            check_config(cfg)

    diffusion = lambda c: c["model"]["diffusion"]  # noqa: E731
    pre = lambda c: c["model"]["pretransform"]  # noqa: E731
    conds = lambda c: c["model"]["conditioning"]["configs"]  # noqa: E731
    refused(lambda c: diffusion(c).pop("global_cond_ids"), r"model.diffusion.global_cond_ids is \[\], not the "
                                                           r"\['seconds_start', 'seconds_total'\]")
    refused(lambda c: diffusion(c).pop("cross_attention_cond_ids"), "model.diffusion.cross_attention_cond_ids is")
    refused(lambda c: diffusion(c)["config"].update(diffusion_objective="v"),
            r"the DiT options \['diffusion_objective'\] are not mapped")  # the loader reads it a level up
    refused(lambda c: diffusion(c).update(diffusion_objective="rectified_flow"),
            "the diffusion objective 'rectified_flow' is not mapped")
    refused(lambda c: diffusion(c).update(input_concat_ids=["prompt"]), "model.diffusion.input_concat_ids is")
    refused(lambda c: diffusion(c)["config"].update(num_memory_tokens=4), "the DiT option num_memory_tokens=4")
    refused(lambda c: pre(c)["config"]["decoder"]["config"].pop("use_snake"),
            "model.pretransform.config.decoder.config.use_snake is False: only snake")
    refused(lambda c: pre(c)["config"]["decoder"]["config"].pop("final_tanh"),
            "model.pretransform.config.decoder.config.final_tanh=True is not mapped")
    refused(lambda c: pre(c)["config"]["encoder"]["config"].update(use_nearest_upsample=True),
            r"the encoder options \['use_nearest_upsample'\] are not mapped")
    refused(lambda c: pre(c).update(scale=2.0), "model.pretransform.scale 2.0 is not mapped")
    refused(lambda c: pre(c)["config"].update(downsampling_ratio=32), "downsampling_ratio 32 is not the product")
    refused(lambda c: conds(c)[1].update(type="int"), "the conditioners are not mapped")
    refused(lambda c: conds(c)[2]["config"].update(max_val=2), "different min_val / max_val")
    refused(lambda c: conds(c)[0]["config"].update(enable_grad=True), "enable_grad")
    refused(lambda c: c["model"]["conditioning"].update(cond_dim=16), "not model.conditioning.cond_dim 16")
    refused(lambda c: c.pop("sample_size"), "its sample_size is None")


# -- 4. soundry models add ------------------------------------------------------------------------------------
def test_models_add_records_a_diffusers_and_a_stability_folder_with_their_facts(stability_dir, tmp_path, capsys,
                                                                              monkeypatch):
    from soundry.cli.main import main
    from soundry.models.catalog import read_records
    from soundry.models.sources.added import open_catalog

    monkeypatch.setenv("SOUNDRY_CONVERTED_DIR", str(tmp_path / "converted"))
    data = tmp_path / "data"
    args = ["--config", str(tmp_path / "none.toml"), "--data-dir", str(data)]
    sa3 = shutil.copytree(SA3, tmp_path / "my-sa3")
    (sa3 / "README.md").write_text("---\nlicense: other\nlicense_name: stable-audio-community\n---\n")
    assert main(["models", "add", "mysa3", str(sa3), *args]) == 0
    assert main(["models", "add", "mysao", str(stability_dir), *args]) == 0
    out = capsys.readouterr().out
    assert "added mysa3: diffusers format" in out and "added mysao: stability (converted" in out
    records = read_records(data)
    assert (records["mysa3"].family, records["mysa3"].channels, records["mysa3"].sample_rate) == (
        "stable-audio-3", 2, 8000)
    assert records["mysa3"].license == "other" and records["mysa3"].steps == 8
    assert (records["mysao"].family, records["mysao"].channels, records["mysao"].sample_rate) == (
        "stable-audio-open", 2, 8000)
    assert records["mysao"].max_seconds == pytest.approx(0.08) and records["mysao"].license == "other"
    spec = open_catalog(data, []).get("mysao")
    assert spec.kind == "diffusion" and spec.sample_rate == 8000 and spec.context == pytest.approx(0.08)
    assert main(["models", "list", *args]) == 0
    listing = capsys.readouterr().out
    assert "format diffusers" in listing and "family stable-audio-3" in listing


def test_an_added_stable_audio_model_is_served_beside_a_running_server(stability_dir, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from soundry.api.app import create_app
    from tests.conftest import PASSWORD, make_settings
    from tests.test_catalog import _add

    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", "")
    monkeypatch.setenv("SOUNDRY_CONVERTED_DIR", str(tmp_path / "converted"))
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as c:
        svc = c.app.state.services
        headers = {"Authorization": "Bearer " + svc.accounts.create_api_key(svc.accounts.create_user("ann",
                                                                                                     PASSWORD))}
        _add(settings.data_dir, "mysao", stability_dir)
        entry = next(m["metadata"] for m in c.get("/v1/models/audio_generation").json()["data"]
                     if m["model"] == "mysao")
        assert entry["family"] == "stable-audio-open" and entry["kind"] == "diffusion"
        assert entry["sample_rate"] == 8000 and entry["channels"] == 2 and entry["license"] == "other"
        r = c.post("/v1/ai/audio_generation", headers=headers,
                   json={"prompt": "dog barking in the distance", "configs": {
                       "model": "mysao", "duration": 0.05, "seed": 0, "steps": 8, "normalization": "none"}})
        assert r.status_code == 201, r.text
        result = wait_for(c, r.json()["data"]["task_id"], headers)
        assert result["status"] == "COMPLETED", result


# -- Stable Audio 3 in Stability's layout ------------------------------------------------------------------------
def _diffusers_script():
    """diffusers' own scripts/convert_stable_audio_3_to_diffusers.py, vendored unchanged in tests/reference_scripts
    (only its pure state-dict functions are called)."""
    import importlib

    return importlib.import_module("tests.reference_scripts.convert_stable_audio_3_to_diffusers")


def test_sa3_stabilitys_layout_converts_as_diffusers_script_does_and_reproduces_the_golden_audio(
        sa3_stability_dir, tmp_path):
    """The same Stability-layout checkpoint through soundry's converter and through diffusers' script's mapping
    gives the same diffusers tensors (every key, every value), which are the tiny's own; the converted folder
    reproduces every golden case of tests/data/stable-audio-3-tiny."""
    from safetensors.torch import load_file

    from soundry.models import load_model
    from soundry.models.stable_audio.convert import convert_stability_dir

    out = convert_stability_dir(sa3_stability_dir, tmp_path / "converted")
    assert {f.suffix for f in out.rglob("*") if f.is_file()} <= {".json", ".safetensors", ".md"}
    ref = load_file(sa3_stability_dir / "model.safetensors")
    script = _diffusers_script()
    theirs = {"transformer": script.convert_dit(ref, differential=True),
              "vae": script.convert_vae(ref, differential=True),
              "duration_embedder": script.convert_duration_embedder(ref)}
    for part, want in theirs.items():
        got = load_file(out / part / "diffusion_pytorch_model.safetensors")
        assert set(got) == set(want), (part, set(got) ^ set(want))
        assert all(torch.equal(got[k], want[k]) for k in want), part
        tiny = load_file(SA3 / part / "diffusion_pytorch_model.safetensors")
        assert set(tiny) == set(got) and all(torch.equal(got[k], tiny[k]) for k in tiny), part
    assert script.extract_text_encoder(ref) == {}  # a frozen T5Gemma is not in the checkpoint: the folder's is kept
    te, tiny_te = load_file(out / "text_encoder" / "model.safetensors"), load_file(SA3 / "text_encoder" /
                                                                                    "model.safetensors")
    assert set(te) == set(tiny_te) and all(torch.equal(te[k], tiny_te[k]) for k in tiny_te)
    for part in ("transformer", "vae", "duration_embedder", "scheduler"):
        config = "scheduler_config.json" if part == "scheduler" else "config.json"
        want = {k: v for k, v in json.loads((SA3 / part / config).read_text()).items() if k != "_diffusers_version"}
        got = {k: v for k, v in json.loads((out / part / config).read_text()).items() if k != "_diffusers_version"}
        assert got == want, part
    # the script's DiT and duration-embedder configs (inferred from shapes) agree with soundry's where it does
    # not hard-code the release's values (its VAE rate and duration range are fixed to 44.1 kHz and 0-384 s)
    dit_cfg = json.loads((out / "transformer" / "config.json").read_text())
    assert {k: dit_cfg[k] for k in script._infer_dit_config(ref)} == script._infer_dit_config(ref)
    model = load_model(str(out), device="cpu")
    assert model.family == "stable-audio-3" and model.sample_rate == 8000
    assert_sa3_golden(model)


def test_sa3_a_t5gemma_trained_inside_the_checkpoint_is_the_one_kept(sa3_stability_dir, tmp_path):
    """``conditioner.conditioners.prompt.model.*`` (a trained T5Gemma) replaces the hub's weights, as diffusers'
    script applies them; the same tensors come out of both."""
    from safetensors.torch import load_file, save_file

    from soundry.models.stable_audio.convert import convert_stability_dir

    src = shutil.copytree(sa3_stability_dir, tmp_path / "trained")
    sd = load_file(src / "model.safetensors")
    trained = {k: v + 0.5 for k, v in load_file(SA3 / "text_encoder" / "model.safetensors").items()}
    sd.update({f"conditioner.conditioners.prompt.model.{k}": v for k, v in trained.items()})
    save_file(sd, str(src / "model.safetensors"))
    out = convert_stability_dir(src, tmp_path / "converted")
    got = load_file(out / "text_encoder" / "model.safetensors")
    theirs = _diffusers_script().extract_text_encoder(sd)
    assert set(got) == set(theirs) == set(trained)
    assert all(torch.equal(got[k], trained[k]) and torch.equal(theirs[k], trained[k]) for k in trained)


def test_sa3_an_unknown_tensor_or_option_is_refused_with_a_sentence(sa3_stability_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from soundry.models.stable_audio.convert import convert_stability_dir

    def variant(name, edit_cfg=None, extra=None):
        d = shutil.copytree(sa3_stability_dir, tmp_path / name)
        if edit_cfg:
            cfg = json.loads((d / "model_config.json").read_text())
            edit_cfg(cfg)
            (d / "model_config.json").write_text(json.dumps(cfg))
        if extra:
            sd = load_file(d / "model.safetensors")
            sd.update(extra)
            save_file(sd, str(d / "model.safetensors"))
        return d

    cases = [
        (variant("lambda", extra={"model.model.transformer.layers.0.self_attn.lambda_dc": torch.zeros(32)}),
         r"DiT tensors soundry does not map: \['transformer.layers.0.self_attn.lambda_dc'\]"),
        (variant("conformer", extra={"pretransform.model.encoder.layers.0.transformers.0.conformer.in_norm.gamma":
                                     torch.ones(16)}), "autoencoder tensors soundry does not map"),
        (variant("stray", extra={"model.model.transformer.layers.0.something": torch.zeros(1)}),
         "DiT tensors soundry does not map"),
        (variant("option", lambda c: c["model"]["diffusion"]["config"].update(mm_dim=4)),
         r"describes model_type 'diffusion_cond_inpaint', diffusion 'dit', autoencoder 'same', text conditioner "
         r"'t5gemma': "
         r"the DiT options \['mm_dim'\] are not mapped; soundry converts Stable Audio 3's layout only as diffusers' "
         r"StableAudio3Pipeline holds it"),
        (variant("prepend", lambda c: c["model"]["diffusion"]["config"].update(global_cond_type="prepend")),
         "the DiT option global_cond_type='prepend' is not mapped"),
        (variant("layerscale", lambda c: c["model"]["pretransform"]["config"]["decoder"]["config"].update(
            layer_scale=True)), r"the decoder options \['layer_scale'\] are not mapped"),
        (variant("zero-pad", lambda c: c["model"]["conditioning"]["configs"][0]["config"].update(padding_mode="zero")),
         "without a learned padding embedding is not mapped"),
        (variant("objective", lambda c: c["model"]["diffusion"].update(diffusion_objective="v")),
         "the diffusion objective 'v' is not mapped"),
        (variant("layer-norm", lambda c: c["model"]["diffusion"]["config"].pop("norm_type")),
         r"the DiT's norm_type 'layer_norm' \(model.diffusion.config.norm_type; absent: layer_norm\) is not mapped"),
        (variant("qk-norm", lambda c: c["model"]["diffusion"]["config"]["attn_kwargs"].pop("qk_norm")),
         "differential with qk_norm 'rms'"),
        (variant("modular", lambda c: c["model"]["diffusion"].update(modular_local_cond_configs=[{"id": "x"}])),
         "model.diffusion.modular_local_cond_configs is not mapped"),
    ]
    for src, match in cases:
        with pytest.raises(CheckpointError, match=match):
            convert_stability_dir(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_sa3_pulled_by_name_is_converted_with_the_t5gemma_from_the_hub(hub, sa3_stability_bare, tmp_path, capsys):
    """`soundry models pull stable-audio-3-small-sfx`: the repo is Stability's layout only; its model_config.json is
    checked before the weights come, the T5Gemma (tokenizer, config, weights) is fetched from the repository the
    config names (safetensors only), and the converted folder is what loads by that name."""
    from soundry.cli.main import main
    from soundry.models import load_model

    hub.repos["stabilityai/stable-audio-3-small-sfx"] = sa3_stability_bare
    hub.repos["google/t5gemma-b-b-ul2"] = t5gemma_repo(tmp_path)
    args = ["--config", str(tmp_path / "none.toml"), "--data-dir", str(tmp_path / "data")]
    assert main(["models", "pull", "stable-audio-3-small-sfx", *args]) == 0
    printed = capsys.readouterr().out.strip()
    folder = Path(printed.split(": ", 1)[1])
    assert printed.startswith("stable-audio-3-small-sfx: ") and folder.parent == tmp_path / "converted"
    assert [repo for repo, _ in hub.downloads] == ["stabilityai/stable-audio-3-small-sfx", "google/t5gemma-b-b-ul2"]
    assert set(hub.downloads[0][1]) == {"model_config.json", "model.safetensors", "README.md"}
    assert _files(folder / "text_encoder") == {"config.json", "model.safetensors"}
    assert {f.suffix for f in folder.rglob("*") if f.is_file()} <= {".json", ".safetensors", ".md"}
    model = load_model("stable-audio-3-small-sfx", device="cpu")
    assert model.family == "stable-audio-3" and model.source == folder and len(hub.downloads) == 2
    assert_sa3_golden(model, cases=[0])


def test_sa3_an_hf_reference_and_models_add_of_stabilitys_layout_convert(hub, sa3_stability_bare,
                                                                         sa3_stability_dir, tmp_path, capsys,
                                                                         monkeypatch):
    from soundry.cli.main import main
    from soundry.models.catalog import read_records
    from soundry.models.sources.paths import resolve_model_dir

    hub.repos["someone/sa3-stability"] = sa3_stability_bare
    hub.repos["google/t5gemma-b-b-ul2"] = t5gemma_repo(tmp_path)
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"mysfx=hf:someone/sa3-stability@{hub.sha('someone/sa3-stability')}")
    folder = resolve_model_dir("mysfx")
    assert folder.parent == tmp_path / "converted" and (folder / "model_index.json").is_file()
    assert [repo for repo, _ in hub.downloads] == ["someone/sa3-stability", "google/t5gemma-b-b-ul2"]
    assert resolve_model_dir("mysfx") == folder and len(hub.downloads) == 2  # converted once
    data = tmp_path / "data"
    args = ["--config", str(tmp_path / "none.toml"), "--data-dir", str(data)]
    assert main(["models", "add", "mysa3", str(sa3_stability_dir), *args]) == 0
    assert "added mysa3: stability (converted" in capsys.readouterr().out
    record = read_records(data)["mysa3"]
    assert (record.family, record.channels, record.sample_rate, record.steps) == ("stable-audio-3", 2, 8000, 8)
    assert len(hub.downloads) == 2  # the folder's own T5Gemma: nothing fetched


def test_sa3_a_whole_t5gemma_from_the_hub_is_kept_as_its_encoder(tmp_path):
    """google/t5gemma-b-b-ul2 is published as a whole encoder-decoder T5Gemma: the converted folder keeps its
    encoder (T5GemmaEncoderModel), as Stability's conditioner loads it."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, T5GemmaForConditionalGeneration

    from soundry.models.stable_audio.convert import _write_t5gemma

    config = AutoConfig.from_pretrained(str(SA3 / "text_encoder"))
    config.architectures, config.is_encoder_decoder = ["T5GemmaForConditionalGeneration"], True
    torch.manual_seed(0)
    full = T5GemmaForConditionalGeneration(config)
    full.save_pretrained(str(tmp_path / "t5gemma"), safe_serialization=True)
    _write_t5gemma(tmp_path / "t5gemma", {}, tmp_path / "text_encoder")
    kept = load_file(tmp_path / "text_encoder" / "model.safetensors")
    whole = {k.removeprefix("model."): v for k, v in full.state_dict().items()}
    assert kept and not any(k.startswith("decoder.") for k in kept)
    assert all(torch.equal(v, whole[k]) for k, v in kept.items())
    assert json.loads((tmp_path / "text_encoder" / "config.json").read_text())["architectures"] == [
        "T5GemmaEncoderModel"]


def test_sa3_the_model_types_and_empty_options_its_loader_reads_alike_are_accepted(sa3_stability_dir):
    """Stability-AI/stable-audio-3 builds the same network for diffusion_cond and diffusion_cond_inpaint, and for a
    diffusion block without a type; empty id lists are no conditioning."""
    from soundry.models.stable_audio.convert import check_config

    cfg = json.loads((sa3_stability_dir / "model_config.json").read_text())
    assert cfg["model_type"] == "diffusion_cond_inpaint" and cfg["model"]["diffusion"]["config"]["norm_type"] == (
        "rms_norm")
    check_config(cfg)
    cfg["model_type"] = "diffusion_cond"
    cfg["model"]["diffusion"].pop("type")
    cfg["model"]["diffusion"].update(input_concat_ids=[], prepend_cond_ids=[], modular_local_cond_configs=[])
    cfg["model"]["diffusion"]["config"].update(timestep_features_logsnr=False, norm_kwargs={"force_fp32": True,
                                                                                           "eps": 1e-6})
    check_config(cfg)
    cfg["model_type"] = "diffusion_uncond"
    with pytest.raises(CheckpointError, match="the model type is not mapped"):
        check_config(cfg)


def test_sa3_a_release_naming_its_own_t5gemma_folder_is_pulled_and_converted_with_it(hub, tmp_path, monkeypatch):
    """Stability's SA3 releases name their T5Gemma as ``repo_id`` (the release's own repository) + ``subfolder``
    (``t5gemma-b-b-ul2/`` beside the checkpoint): that folder comes with the checkpoint (config, safetensors,
    tokenizer files; nothing else) and is the one converted, from the hub and from a local copy alike."""
    from safetensors.torch import load_file

    from soundry.models import load_model
    from soundry.models.sources.paths import converted, resolve_model_dir

    src = write_sa3_stability_layout(SA3, tmp_path / "sa3-own-t5gemma", text_beside=False,
                                     text_repo="someone/sa3-own", text_subfolder="t5gemma-b-b-ul2")
    (src / "t5gemma-b-b-ul2" / "pytorch_model.bin").write_bytes(b"a pickle, never fetched")
    hub.repos["someone/sa3-own"] = src
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"mysfx=hf:someone/sa3-own@{hub.sha('someone/sa3-own')}")
    folder = resolve_model_dir("mysfx")
    assert [repo for repo, _ in hub.downloads] == ["someone/sa3-own"]
    assert set(hub.downloads[0][1]) == {"model_config.json", "model.safetensors", "README.md",
                                        "t5gemma-b-b-ul2/config.json", "t5gemma-b-b-ul2/model.safetensors",
                                        "t5gemma-b-b-ul2/tokenizer.json", "t5gemma-b-b-ul2/tokenizer_config.json"}
    te, tiny_te = load_file(folder / "text_encoder" / "model.safetensors"), load_file(SA3 / "text_encoder" /
                                                                                        "model.safetensors")
    assert set(te) == set(tiny_te) and all(torch.equal(te[k], tiny_te[k]) for k in tiny_te)
    assert_sa3_golden(load_model("mysfx", device="cpu"), cases=[0])
    monkeypatch.setenv("SOUNDRY_CONVERTED_DIR", str(tmp_path / "converted-local"))
    local = converted(src, download=False)  # a local copy of the release: its own folder, nothing fetched
    assert len(hub.downloads) == 1 and (local / "text_encoder" / "model.safetensors").is_file()
