"""Checkpoint layouts the loader cannot serve are refused at load time, naming the xp.cfg key."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from soundry.models import load_model
from soundry.models.errors import CheckpointError
from tests.helpers_models import TINY


def variant(tmp_path, kind: str, edit) -> str:
    """A copy of a tiny release directory with its xp.cfg changed by ``edit(cfg)``."""
    out = tmp_path / kind
    shutil.copytree(TINY[kind], out)
    pkg = torch.load(out / "state_dict.bin", weights_only=True)
    cfg = yaml.safe_load(pkg["xp.cfg"])
    edit(cfg)
    pkg["xp.cfg"] = yaml.safe_dump(cfg)
    torch.save(pkg, out / "state_dict.bin")
    return str(out)


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["interleave_stereo_codebooks"].update(per_timestep=True), "interleave_stereo_codebooks.per_timestep"),
    (lambda c: c["interleave_stereo_codebooks"].update(use=False), "interleave_stereo_codebooks.use"),
    (lambda c: c.update(channels=4), "channels=4"),
    (lambda c: c.update(compression_model_n_q=8), "compression_model_n_q=8"),
    (lambda c: c["conditioners"].update(self_wav={"model": "chroma_stem"}), "conditioners.self_wav"),
])
def test_unsupported_stereo_layouts_are_refused(tmp_path, edit, key):
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_model(variant(tmp_path, "musicgen-stereo", edit), device="cpu")


def test_lm_codebooks_must_match_the_codec(tmp_path):
    path = variant(tmp_path, "musicgen-stereo", lambda c: c.pop("interleave_stereo_codebooks") and c.update(channels=1))
    with pytest.raises(CheckpointError, match="transformer_lm.n_q=8"):
        load_model(path, device="cpu")


def test_stereo_model_facts():
    from tests.helpers_models import tiny_model

    m = tiny_model("musicgen-stereo")
    assert (m.channels, m.cfg.n_q, m.cfg.delays, m.codec.n_q) == (2, 8, (0, 0, 1, 1, 2, 2, 3, 3), 8)
