"""The soundry command: users and a local generation."""

import pytest
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


def _readme_line(start: str) -> str:
    """The README's command line that begins with ``start``, as written (without its comment)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    lines = [line.split("  #")[0].strip() for line in readme.splitlines() if line.startswith(start)]
    assert lines, f"the README no longer shows {start!r}"
    return lines[0]


def _readme_command(start: str) -> list[str]:
    """The README's command without its optional ``[...]`` parts and the leading "soundry"."""
    import re
    import shlex

    return shlex.split(re.sub(r"\[[^\]]*\]", "", _readme_line(start)))[1:]


def test_user_commands_as_the_readme_writes_them(tmp_path, capsys, monkeypatch):
    """Global options after the subcommand; create asks for the password; revoke-key, disable, enable."""
    monkeypatch.chdir(tmp_path)  # the README's ./data
    answers = iter(["erin's password", "erin's password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    sub = {"NAME": "erin", "KEY": ""}

    def run(start: str) -> int:  # the README's command, with --data-dir after the subcommand
        return main([sub.get(word, word) for word in _readme_command(start)] + ["--data-dir", "./data"])

    assert run("soundry users create NAME") == 0  # no --password: asked twice, not echoed
    assert "created user erin" in capsys.readouterr().out
    assert run("soundry users token NAME") == 0
    key = capsys.readouterr().out.strip()
    from soundry.config import Settings
    from soundry.service.accounts import Accounts
    from soundry.tasks.store import TaskStore

    settings = Settings.load(config_file=str(tmp_path / "none.toml"), data_dir="./data")
    accounts = Accounts(TaskStore(settings.database_url), settings.secret)
    assert accounts.authenticate("erin", "erin's password").username == "erin"
    assert accounts.user_for_api_key(key).username == "erin"
    assert run("soundry users disable NAME") == 0
    from soundry.service.accounts import AuthError

    with pytest.raises(AuthError):
        accounts.user_for_api_key(key)  # a disabled user's keys stop working at once
    assert run("soundry users enable NAME") == 0
    assert accounts.user_for_api_key(key).username == "erin"
    sub["KEY"] = key
    assert run("soundry users revoke-key KEY") == 0
    with pytest.raises(AuthError):
        accounts.user_for_api_key(key)
    assert run("soundry users revoke-key KEY") == 1
    assert "no such API key" in capsys.readouterr().err
    assert main(["users", "disable", "nobody", "--data-dir", "./data"]) == 1
    # a mistyped confirmation creates nothing
    answers = iter(["one password", "another one"])
    assert main(["users", "create", "fred", "--data-dir", "./data"]) == 1
    assert "differ" in capsys.readouterr().err and accounts.get_user("fred") is None


def test_config_is_accepted_after_the_subcommand(tmp_path, capsys):
    toml = tmp_path / "soundry.toml"
    toml.write_text(f'[soundry]\ndata_dir = "{tmp_path / "elsewhere"}"\n')
    assert main(["users", "create", "gil", "--password", "gil password", "--config", str(toml)]) == 0
    assert (tmp_path / "elsewhere" / "soundry.db").exists()
    assert main(["--config", str(toml), "users", "list"]) == 0  # before the subcommand, too
    assert "gil" in capsys.readouterr().out


def test_a_short_secret_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret").write_text("")
    assert main(["users", "list", "--data-dir", str(tmp_path / "data")]) == 2
    assert "at least 32" in capsys.readouterr().err


def test_serve_with_data_dir_after_the_subcommand(tmp_path):
    """``soundry serve --data-dir ./data`` as the README writes it (was: "unrecognized arguments")."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from tests.live_server import free_port

    assert "[--data-dir ./data]" in _readme_line("soundry serve")  # the README shows the option after "serve"
    port = free_port()
    env = {**os.environ, "SOUNDRY_MODEL_PATHS": f"audiogen={TINY['audiogen']},musicgen={TINY['musicgen']}",
           "SOUNDRY_CONFIG": str(tmp_path / "none.toml")}
    proc = subprocess.Popen([sys.executable, "-m", "soundry.cli.main", "serve", "--data-dir", "./data",
                             "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()
        assert (tmp_path / "data" / "soundry.db").exists()
        assert (tmp_path / "data").stat().st_mode & 0o077 == 0
    finally:
        proc.terminate()
        proc.wait(30)
