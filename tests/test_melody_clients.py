"""Melody (issue 20) and the MultiBand Diffusion decoder (issue 22) from the Python client, the CLI and the
playground: remote against one live server with the tiny models (the browser test in Chromium, skipped without it),
and local (in process) on the tiny checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from soundry import Client
from soundry.cli.main import main
from soundry.client import InvalidRequestError
from tests.conftest import make_settings
from tests.helpers_models import TINY

TINY_MBD = TINY["musicgen-stereo"] / "mbd"


@pytest.fixture(scope="module")
def tune(tmp_path_factory):
    """Half a second of a 440 Hz tone (mono, 16 kHz): something with a pitch to follow."""
    path = tmp_path_factory.mktemp("tune") / "tune.wav"
    sf.write(path, (0.3 * np.sin(np.arange(8000) / 16000 * 2 * np.pi * 440)).astype("float32"), 16000)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One live server for the module: a melody model, text-only MusicGen models and the tiny MBD."""
    from tests.live_server import start_live_server

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUNDRY_MODEL_PATHS", ",".join(f"{name}={TINY[name]}" for name in (
            "audiogen", "musicgen", "musicgen-stereo", "musicgen-melody")))
        live = start_live_server(make_settings(tmp_path_factory.mktemp("server"), mbd_path=str(TINY_MBD)))
        yield live
        live.stop()


@pytest.fixture
def conn(server):
    return ["--url", server.url, "--api-key", server.api_key]


def test_client_generates_from_a_melody_file(server, tune):
    with Client(server.url, api_key=server.api_key) as client, tune.open("rb") as f:
        audio = client.generate("jazzy piano", model="musicgen-melody", melody=f, duration=0.5, seed=1)
        samples, rate = audio.to_numpy()
        assert rate == 32000 and len(samples) == 16000
        config = client.task(audio.task_id).info["config"]
        assert config["melody"] and client.upload(tune)["id"] != config["melody"]  # the file was uploaded


def test_client_melody_on_a_text_only_model_is_refused(server, tune):
    with Client(server.url, api_key=server.api_key) as client, pytest.raises(InvalidRequestError) as err:
        client.generate("jazzy piano", model="musicgen", melody=tune, duration=0.5)
    assert err.value.status == 422 and "configs.melody" in err.value.description


def test_cli_remote_melody(conn, tune, tmp_path):
    out = tmp_path / "jazz.wav"
    assert main(["generate", "jazzy piano", "--model", "musicgen-melody", "--melody", str(tune), "-o", str(out),
                 "--duration", "0.5", "--seed", "1", *conn]) == 0
    audio, rate = sf.read(out)
    assert rate == 32000 and len(audio) == 16000


def test_cli_remote_melody_errors(conn, tune, tmp_path, capsys):
    out = str(tmp_path / "x.wav")
    assert main(["generate", "x", "--model", "musicgen", "--melody", str(tune), "-o", out, *conn]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "configs.melody" in errors[0] and "not conditioned on a melody" in errors[0]
    assert main(["generate", "x", "--model", "musicgen-melody", "--melody", str(tmp_path / "nope.wav"), "-o", out,
                 *conn]) == 2
    assert "--melody: no such file" in capsys.readouterr().err


def test_cli_local_melody_as_the_readme_writes_it(tune, tmp_path, monkeypatch):
    """The README's local melody command, with the name musicgen-melody pointed at the tiny checkpoint."""
    import shutil

    from tests.test_cli import _readme_command

    monkeypatch.chdir(tmp_path)
    shutil.copy(tune, "tune.wav")
    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"musicgen-melody={TINY['musicgen-melody']}")
    command = _readme_command('soundry generate "jazzy piano" --model musicgen-melody --melody tune.wav')
    assert main([*command, "--duration", "0.5", "--seed", "1"]) == 0
    audio, rate = sf.read(tmp_path / "jazz.wav")
    assert rate == 32000 and len(audio) == 16000


def test_cli_local_melody_errors(tune, tmp_path, capsys):
    out = str(tmp_path / "x.wav")
    assert main(["generate", "x", "--model-path", str(TINY["musicgen"]), "--melody", str(tune), "-o", out]) == 2
    err = capsys.readouterr().err
    assert "error: musicgen-tiny is not conditioned on a melody\n" in err
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all")
    melody_model = ["--model-path", str(TINY["musicgen-melody"]), "-o", out]
    assert main(["generate", "x", *melody_model, "--melody", str(garbage)]) == 2
    assert "error: --melody: not a readable audio file" in capsys.readouterr().err
    assert main(["generate", "x", *melody_model, "--melody", str(tmp_path / "nope.wav")]) == 2
    assert "error: --melody: " in capsys.readouterr().err


def test_cli_mbd_decoder_local_and_remote(server, conn, tmp_path, capsys):
    """--decoder mbd decodes the tokens EnCodec would decode (same seed) with MultiBand Diffusion, locally as the
    server does (the same file from the same seed)."""
    stereo = ["generate", "jazzy piano", "--duration", "0.5", "--seed", "4", "--normalization", "none"]
    local = [*stereo, "--model-path", str(TINY["musicgen-stereo"])]
    encodec, mbd, served = tmp_path / "encodec.wav", tmp_path / "mbd.wav", tmp_path / "served.wav"
    assert main([*local, "-o", str(encodec)]) == 0
    assert main([*local, "-o", str(mbd), "--decoder", "mbd", "--mbd-path", str(TINY_MBD)]) == 0
    capsys.readouterr()
    assert main([*stereo, "--model", "musicgen-stereo", "-o", str(served), "--decoder", "mbd", *conn]) == 0
    task_id = capsys.readouterr().out.split("task ")[-1].strip(")\n")
    with Client(server.url, api_key=server.api_key) as client:
        assert client.task(task_id).info["decoder"] == "mbd"
    (a, rate_a), (b, rate_b), (c, rate_c) = sf.read(encodec), sf.read(mbd), sf.read(served)
    assert rate_a == rate_b == rate_c == 32000 and a.shape == b.shape == c.shape == (16000, 2)
    assert not np.allclose(a, b, atol=1e-3)  # a different decoder made it
    np.testing.assert_allclose(b, c, atol=1e-4)  # 16-bit WAVs of the same decode
    assert main(["generate", "x", "--model-path", str(TINY["audiogen"]), "--decoder", "mbd",
                 "-o", str(tmp_path / "x.wav")]) == 2
    assert "MultiBand Diffusion decodes MusicGen's tokens" in capsys.readouterr().err


def _visible(page, testid: str) -> bool:
    return page.locator(f"[data-testid={testid}]").is_visible()


@pytest.mark.browser
def test_playground_melody_picker_and_mbd_checkbox(server, tune):
    """The melody picker shows for melody models only, the MBD checkbox for MusicGen models; a picked melody is
    uploaded and followed, the checkbox sends decoder mbd, and the clip plays and downloads."""
    from tests.browser import ARTIFACTS, chromium_page

    with chromium_page() as (page, errors):
        page.goto(server.url + "/")
        page.fill("#api-key", server.api_key)
        page.click("[data-testid=apikey-submit]")
        page.wait_for_selector("#model option[value=musicgen-melody]", state="attached")
        page.select_option("#model", "audiogen")
        assert not _visible(page, "melody-field") and not _visible(page, "decoder-field")
        page.select_option("#model", "musicgen")
        assert not _visible(page, "melody-field") and _visible(page, "decoder-field")
        page.select_option("#model", "musicgen-melody")
        assert _visible(page, "melody-field") and _visible(page, "decoder-field")
        page.fill("#prompt", "jazzy piano")
        page.fill("#duration", "0.5")
        page.set_input_files("[data-testid=melody]", str(tune))
        page.check("[data-testid=mbd]")
        page.click("[data-testid=generate-submit]")
        try:
            page.wait_for_function("document.querySelector('#task-status').dataset.status === 'COMPLETED'",
                                   timeout=60_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "playground-melody-failure.png"), full_page=True)
            raise AssertionError(f"no completion: form error={page.locator('#form-error').text_content()!r} "
                                 f"task error={page.locator('#task-error').text_content()!r}") from None
        src = page.get_attribute("#player", "src")
        fetched = page.evaluate("""async (src) => {
            const r = await fetch(src);
            const size = (await r.arrayBuffer()).byteLength;
            return {status: r.status, type: r.headers.get('content-type') || '', size};
        }""", src)
        assert fetched["status"] == 200 and fetched["type"].startswith("audio/") and fetched["size"] > 44, fetched
        page.wait_for_function("document.querySelector('#player').readyState > 0", timeout=20_000)
        assert page.get_attribute("[data-testid=download]", "href") == src
        task_id = page.locator("#task-id").text_content().strip().lstrip("#")
        page.screenshot(path=str(ARTIFACTS / "playground-melody.png"), full_page=True)
        assert not errors, errors
    with Client(server.url, api_key=server.api_key) as client:
        task = client.task(task_id)
        assert task.info["config"]["melody"] and task.info["decoder"] == "mbd"
        samples, rate = task.audio().to_numpy()
        assert rate == 32000 and len(samples) == 16000
