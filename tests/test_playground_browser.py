"""The web playground in a real browser (Debian's Chromium driven by Playwright) against a live server:
sign in, generate with the tiny audiogen model, follow progress, play the result, see it in the history."""

from __future__ import annotations

import httpx

from tests.browser import ARTIFACTS, chromium_page

PROMPT = "a wooden door creaking open"


def test_playground_generates_plays_and_lists_history(live_server):
    with chromium_page(viewport={"width": 1280, "height": 1000}) as (page, console_errors):
        response = page.goto(live_server.url + "/")
        assert response is not None and response.ok, f"GET / answered {response and response.status}"

        # Sign in with the password.
        page.fill("#username", live_server.username)
        page.fill("#password", live_server.password)
        page.click("[data-testid=login-submit]")
        page.wait_for_selector("[data-testid=app-view]", state="visible")
        assert page.evaluate("sessionStorage.getItem('soundry.token')")

        # The model list comes from the API.
        page.wait_for_selector("#model option[value=audiogen]", state="attached")
        page.wait_for_function("document.querySelectorAll('#model option').length > 1")

        # Generate one second with audiogen.
        page.fill("#prompt", PROMPT)
        page.select_option("#model", "audiogen")
        page.fill("#duration", "1")
        page.click("[data-testid=generate-submit]")

        status = page.locator("[data-testid=task-status]")
        progress = page.locator("#progress-text")
        try:
            page.wait_for_function(
                "document.querySelector('#task-status').dataset.status === 'COMPLETED'"
                " && document.querySelector('#progress-text').textContent.trim() === '100 %'",
                timeout=60_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "playground-failure.png"), full_page=True)
            raise AssertionError(f"no completion: status={status.text_content()!r} "
                                 f"progress={progress.text_content()!r} "
                                 f"form error={page.locator('#form-error').text_content()!r} "
                                 f"task error={page.locator('#task-error').text_content()!r}") from None
        assert status.text_content().strip() == "COMPLETED"
        assert progress.text_content().strip() == "100 %"
        assert page.locator("#task-error").is_hidden()

        # The player has a playable source (a signed link that needs no auth header).
        src = page.get_attribute("#player", "src")
        assert src, "the <audio> element has no src"
        fetched = page.evaluate("""async (src) => {
            const r = await fetch(src);
            const body = await r.arrayBuffer();
            return {status: r.status, type: r.headers.get('content-type') || '', size: body.byteLength};
        }""", src)
        assert fetched["status"] == 200, fetched
        assert fetched["type"].startswith("audio/"), fetched
        assert fetched["size"] > 44, fetched
        page.wait_for_function("document.querySelector('#player').readyState > 0", timeout=20_000)
        assert page.get_attribute("[data-testid=download]", "href") == src

        # The history lists the task.
        item = page.locator("[data-testid=history-item]", has_text=PROMPT)
        item.first.wait_for(state="visible", timeout=15_000)
        assert "COMPLETED" in item.first.text_content()

        # Let the waveform draw if it can (not required: it depends on the browser's decoders).
        try:
            page.wait_for_function("document.querySelector('#waveform').dataset.drawn === 'true'", timeout=5_000)
        except Exception:
            pass
        page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
        assert not console_errors, console_errors


def test_playground_continues_an_uploaded_clip(live_server, tmp_path):
    """The file picker uploads a clip and the task continues it (the result is prompt + continuation)."""
    import numpy as np
    import soundfile as sf

    from soundry import Client

    clip = tmp_path / "loop.wav"
    sf.write(clip, (0.3 * np.sin(np.arange(8000) / 16000 * 2 * np.pi * 330)).astype("float32"), 16000)
    with chromium_page() as (page, errors):
        page.goto(live_server.url + "/")
        page.fill("#api-key", live_server.api_key)
        page.click("[data-testid=apikey-submit]")
        page.wait_for_selector("[data-testid=app-view]", state="visible")
        page.wait_for_selector("#model option[value=audiogen]", state="attached")
        page.fill("#prompt", "more of this")
        page.select_option("#model", "audiogen")
        page.fill("#duration", "1")
        page.set_input_files("[data-testid=input-audio]", str(clip))
        page.click("[data-testid=generate-submit]")
        page.wait_for_function("document.querySelector('#task-status').dataset.status === 'COMPLETED'",
                               timeout=60_000)
        task_id = page.locator("#task-id").text_content().strip().lstrip("#")
        assert not errors, errors
    with Client(live_server.url, api_key=live_server.api_key) as client:
        task = next(t for t in client.history() if t.id == task_id)
        assert task.info["config"]["input_audio"]
        samples, rate = client.task(task_id).audio().to_numpy()
        assert rate == 16000 and len(samples) == 16000


def test_playground_offers_a_diffusion_model_what_it_takes(tmp_path, monkeypatch):
    """A Stable Audio model: the form shows its denoising steps (its default as the placeholder) and its own
    guidance, hides what it would refuse (top_k, top_p, temperature, a clip to continue), says that the clip
    plays once it is done, and generates; back on audiogen the sampling fields return."""
    from tests.conftest import make_settings
    from tests.helpers_models import DATA, TINY
    from tests.live_server import start_live_server

    monkeypatch.setenv("SOUNDRY_MODEL_PATHS", f"audiogen={TINY['audiogen']},"
                                              f"stable-audio-3-small-sfx={DATA / 'stable-audio-3-tiny'}")
    server = start_live_server(make_settings(tmp_path))
    try:
        with chromium_page(viewport={"width": 1280, "height": 1000}) as (page, console_errors):
            page.goto(server.url + "/")
            page.fill("#username", server.username)
            page.fill("#password", server.password)
            page.click("[data-testid=login-submit]")
            page.wait_for_selector("#model option[value=stable-audio-3-small-sfx]", state="attached")

            page.select_option("#model", "stable-audio-3-small-sfx")
            assert page.locator("[data-testid=steps-field]").is_visible()
            assert page.get_attribute("#steps", "placeholder") == "default 8"
            assert page.input_value("#cfg-coef") == "1"  # the model's own guidance (distilled: none)
            assert all(not el.is_visible() for el in page.locator("[data-testid=sampling-field]").all())
            assert page.locator("[data-testid=input-audio-field]").is_hidden()

            page.fill("#prompt", "glass shattering on a stone floor")
            page.fill("#duration", "0.05")
            page.fill("#steps", "4")
            page.click("[data-testid=generate-submit]")
            page.wait_for_function("document.querySelector('#task-status').dataset.status === 'COMPLETED'",
                                   timeout=60_000)
            assert page.locator("#form-error").is_hidden(), page.locator("#form-error").text_content()
            assert page.locator("[data-testid=at-once-note]").is_hidden()  # only while it runs
            assert page.get_attribute("#player", "src")
            history = httpx.get(server.url + "/v1/user/history", headers={
                "Authorization": f"Bearer {server.api_key}"}).json()["data"]["tasks"]
            config = history[0]["config"]
            assert config["model"] == "stable-audio-3-small-sfx" and config["steps"] == 4
            assert config["cfg_coef"] == 1.0 and "top_k" not in config

            page.select_option("#model", "audiogen")
            assert all(el.is_visible() for el in page.locator("[data-testid=sampling-field]").all())
            assert page.locator("[data-testid=steps-field]").is_hidden()
            assert page.input_value("#cfg-coef") == "3.0"
            assert not console_errors, console_errors
    finally:
        server.stop()
