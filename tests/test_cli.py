"""The soundry command: users and a local generation."""

import soundfile as sf

from soundry.cli.main import main
from tests.helpers_models import TINY


def test_users_create_token_list(tmp_path, capsys):
    d = str(tmp_path / "data")
    assert main(["--data-dir", d, "users", "create", "dave", "--password", "dave password"]) == 0
    assert main(["--data-dir", d, "users", "create", "dave", "--password", "dave password"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["--data-dir", d, "users", "token", "dave"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("sk-")
    assert main(["--data-dir", d, "users", "list"]) == 0
    assert "dave" in capsys.readouterr().out
    # the key is stored hashed, never in clear
    assert key.encode() not in (tmp_path / "data" / "soundry.db").read_bytes()
    assert b"dave password" not in (tmp_path / "data" / "soundry.db").read_bytes()


def test_generate_locally(tmp_path):
    out = tmp_path / "rain.flac"
    assert main(["generate", "rain on a tin roof", "-o", str(out), "--model-path", str(TINY["audiogen"]),
                 "--duration", "0.5", "--seed", "1"]) == 0
    audio, sr = sf.read(out)
    assert sr == 16000 and len(audio) == 8000


def test_generate_reports_missing_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SOUNDRY_MODEL_PATHS", raising=False)
    assert main(["generate", "x", "-o", str(tmp_path / "x.wav"), "--model-path", str(tmp_path / "nowhere")]) == 1
    assert "neither a model directory nor a known model" in capsys.readouterr().err


def test_generate_locally_continues_an_input_audio(tmp_path, capsys):
    import numpy as np

    clip = tmp_path / "loop.wav"
    sf.write(clip, (0.3 * np.sin(np.arange(24000) / 48000 * 2 * np.pi * 330)).astype("float32"), 48000)
    out = tmp_path / "more.wav"
    assert main(["generate", "rain", "-o", str(out), "--model-path", str(TINY["musicgen-stereo"]),
                 "--duration", "1", "--input-audio", str(clip), "--continuation-end", "0.3"]) == 0
    audio, sr = sf.read(out)
    assert sr == 32000 and audio.shape == (32000, 2)
    assert main(["generate", "rain", "-o", str(out), "--model-path", str(TINY["audiogen"]),
                 "--duration", "0.4", "--input-audio", str(clip)]) == 2
    assert "audio prompt" in capsys.readouterr().err
