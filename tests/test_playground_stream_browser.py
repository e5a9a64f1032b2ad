"""The playground plays a task's audio while it is generated (Chromium via Playwright), swaps to the
stored file when the task completes, and rates the finished clip."""

from __future__ import annotations

from tests.browser import ARTIFACTS, chromium_page

# Records, at the first moment the player's clock moves, what it was playing and the task's status.
WATCH_PLAYBACK = """() => {
  window.firstPlay = null;
  const player = document.querySelector('#player');
  player.addEventListener('timeupdate', () => {
    if (window.firstPlay === null && player.currentTime > 0) {
      window.firstPlay = {status: document.querySelector('#task-status').dataset.status,
                          source: player.dataset.source, time: player.currentTime};
    }
  });
}"""


def test_playground_plays_the_stream_before_completion_then_the_file(live_server):
    with chromium_page() as (page, errors):
        page.goto(live_server.url + "/")
        page.fill("#username", live_server.username)
        page.fill("#password", live_server.password)
        page.click("[data-testid=login-submit]")
        page.wait_for_selector("[data-testid=app-view]", state="visible")
        page.evaluate(WATCH_PLAYBACK)

        page.fill("#prompt", "steady rain on a tent")
        # Long enough that playback starts well before the end: the tiny model generates 6 s in ~0.6 s
        # here, less than the browser takes to start playing; 20 s takes ~2 s (and spans two windows).
        page.fill("#duration", "20")
        page.click("[data-testid=generate-submit]")  # the click is the user gesture that allows playback
        try:  # the first moment the player's clock moves, whatever it plays
            page.wait_for_function("window.firstPlay !== null", timeout=180_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "playground-stream-failure.png"), full_page=True)
            raise
        first = page.evaluate("window.firstPlay")
        print("first playback:", first)
        assert first["source"] == "stream" and first["status"] in ("PENDING", "PROCESSING"), first
        page.wait_for_function("document.querySelector('#task-status').dataset.status === 'COMPLETED'",
                               timeout=180_000)

        # swapped to the stored file, which is what the download link gives
        page.wait_for_function("document.querySelector('#player').dataset.source === 'file'")
        src = page.get_attribute("#player", "src")
        assert "/v1/files/" in src and page.get_attribute("[data-testid=download]", "href") == src
        assert page.locator("[data-testid=live-note]").is_hidden()

        # rate the finished clip
        page.select_option("#rating", "4")
        page.fill("#rating-text", "nice and steady")
        page.click("[data-testid=rating-submit]")
        page.wait_for_function("document.querySelector('#rating-saved').textContent === 'Rated 4'")
        task_id = page.locator("#task-id").text_content().strip().lstrip("#")
        stored = live_server.services.store.get(task_id)
        assert stored.rating == 4.0 and stored.feedback == "nice and steady"
        page.screenshot(path=str(ARTIFACTS / "playground-stream.png"), full_page=True)
        assert not errors, errors
