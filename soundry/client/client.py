"""``soundry.Client``: the Python SDK for a soundry server (or any FlexStack-compatible one).

    from soundry import Client
    client = Client("http://127.0.0.1:8000", api_key="sk-…")       # or username=…, password=…
    audio = client.generate("rain on a tin roof", duration=5)        # waits, returns Audio
    audio.save("rain.wav")
    task = client.submit("calm piano", model="musicgen", duration=10)
    task.wait(progress=lambda t: print(t.status, t.percent))
    client.generate("jazzy piano", model="musicgen-melody", melody="tune.wav", decoder="mbd").save("jazz.wav")
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx

from soundry.client.errors import (
    RateLimitedError,
    ServerUnavailableError,
    SoundryError,
    TaskCanceledError,
    TaskFailedError,
    error_for,
)

FINAL = ("COMPLETED", "FAILED", "CANCELED")
AudioFile = str | Path | BinaryIO  # what upload() takes: a local path, or a file object opened in binary mode


@dataclass
class Audio:
    """A finished clip: the encoded file's bytes and what the server said about it."""

    data: bytes
    format: str
    sample_rate: int
    duration: float
    task_id: str
    url: str

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.data)
        return path

    def to_numpy(self):
        """(samples, sample_rate), decoded with soundfile."""
        import io

        import soundfile as sf

        return sf.read(io.BytesIO(self.data))


@dataclass
class Task:
    """A task on the server; ``info`` is its latest result object (status, percent, url_download, …)."""

    client: Client = field(repr=False)
    id: str
    info: dict = field(default_factory=dict)

    status = property(lambda self: self.info.get("status", "PENDING"))
    percent = property(lambda self: int(self.info.get("percent") or 0))
    queue_position = property(lambda self: self.info.get("queue_position"))
    eta_seconds = property(lambda self: self.info.get("eta_seconds"))
    done = property(lambda self: self.status in FINAL)

    def refresh(self) -> Task:
        self.info = self.client._request("GET", f"/ai/audio_generation/{self.id}")["data"]["data"]
        return self

    def cancel(self) -> Task:
        self.info = self.client._request("POST", f"/ai/audio_generation/{self.id}/cancel")["data"]["data"]
        return self

    def wait(self, timeout: float | None = None, progress: Callable[[Task], None] | None = None,
             poll_interval: float = 0.5) -> Task:
        """Block until the task ends (live events, or polling if the stream breaks); raises
        TaskFailedError / TaskCanceledError for those endings and TimeoutError after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for _event, info in self.client.events(self.id, timeout=timeout):
                self.info = info
                if progress:
                    progress(self)
                if self.done:
                    break
        except (httpx.HTTPError, ServerUnavailableError, RateLimitedError):
            pass  # fall back to polling below (a broken stream, or too many streams open)
        while not self.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"task {self.id} still {self.status} after {timeout} s")
            time.sleep(poll_interval)
            self.refresh()
            if progress:
                progress(self)
        if self.status == "FAILED":
            raise TaskFailedError(self.info.get("error_description") or "the task failed", "task_failed")
        if self.status == "CANCELED":
            raise TaskCanceledError(f"task {self.id} was canceled", "task_canceled")
        return self

    def audio(self) -> Audio:
        """Download the finished clip (the signed link needs no credentials)."""
        if self.status != "COMPLETED":
            self.refresh()
        url = self.info.get("url_download")
        if self.status != "COMPLETED" or not url:
            raise SoundryError(f"task {self.id} is {self.status}; there is no audio yet", "not_ready")
        resp = self.client._http.get(url)
        if resp.status_code != 200:
            raise self.client._error(resp)
        return Audio(resp.content, self.info.get("output_format", ""), int(self.info.get("sample_rate") or 0),
                     float(self.info.get("duration") or 0.0), self.id, url)


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 username: str | None = None, password: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        root = base_url.rstrip("/")
        self.api_url = root if root.endswith("/v1") else root + "/v1"
        if not api_key and not (username and password):
            raise ValueError("give api_key=…, or username=… and password=…")
        self.api_key, self.username, self.password = api_key, username, password
        self._access: str | None = api_key
        self._refresh: str | None = None
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)

    # -- the API ---------------------------------------------------------------------------------
    def generate(self, prompt: str, negative_prompt: str = "", progress: Callable[[Task], None] | None = None,
                 timeout: float | None = None, input_audio: AudioFile | None = None, melody: AudioFile | None = None,
                 **configs) -> Audio:
        """Submit, wait (``progress(task)`` on every update) and download the clip. ``input_audio``, a
        local file, is uploaded and continued (or pass ``configs["input_audio"]``, an upload id). ``melody``, a
        local file, is uploaded and the clip follows its tune (melody models only, e.g. ``model="musicgen-melody"``;
        or pass ``configs["melody"]``, an upload id). ``decoder="mbd"`` decodes the stored file with MultiBand
        Diffusion (MusicGen models: slower, higher fidelity) instead of EnCodec. Files are paths or binary
        file objects."""
        for field_name, audio_file in (("input_audio", input_audio), ("melody", melody)):
            if audio_file is not None:
                configs[field_name] = self.upload(audio_file)["id"]
        return self.submit(prompt, negative_prompt, **configs).wait(timeout, progress).audio()

    def upload(self, path: AudioFile) -> dict:
        """Upload an audio file (wav, flac, ogg, mp3; a path or a binary file object) to continue from or to
        follow as a melody; returns its id, duration, ..."""
        if hasattr(path, "read"):
            name, data = Path(str(getattr(path, "name", "") or "audio")).name, path.read()
        else:
            path = Path(path)
            name, data = path.name, path.read_bytes()
        return self._request("POST", "/uploads", files={"file": (name, data)})["data"]

    def delete_upload(self, upload_id: str) -> dict:
        return self._request("DELETE", f"/uploads/{upload_id}")["data"]

    def submit(self, prompt: str, negative_prompt: str = "", webhook: str | None = None, **configs) -> Task:
        """Create a task; ``configs``: model, duration, top_k, top_p, temperature, cfg_coef, seed,
        output_format, bit_depth, normalization, target_lufs, input_audio (an upload id), continuation_start/end,
        melody (an upload id: the tune a melody model follows), decoder ("encodec", the default, or "mbd":
        MultiBand Diffusion for MusicGen models), steps (the denoising steps of a diffusion model, e.g.
        ``model="stable-audio-open"``, which takes steps and cfg_coef but no top_k/top_p/temperature: see
        :meth:`models`' ``kind``, ``default_steps`` and ``default_guidance``)."""
        body: dict = {"prompt": prompt, "configs": configs}
        if negative_prompt:
            body["negative_prompt"] = negative_prompt
        if webhook:
            body["webhook"] = webhook
        data = self._request("POST", "/ai/audio_generation", json=body)["data"]
        return Task(self, data["task_id"], {"status": "PENDING", "percent": 0, **data})

    def task(self, task_id: str) -> Task:
        return Task(self, task_id).refresh()

    def history(self, limit: int = 20, offset: int = 0) -> list[Task]:
        data = self._request("GET", "/user/history", params={"limit": limit, "offset": offset})["data"]
        return [Task(self, t["task_id"], t) for t in data["tasks"]]

    def models(self) -> list[dict]:
        return self._request("GET", "/models/audio_generation")["data"]

    def me(self) -> dict:
        return self._request("GET", "/user/me")["data"]

    def events(self, task_id: str, timeout: float | None = None) -> Iterator[tuple[str, dict]]:
        """The task's Server-Sent Events as (event, result object) until it ends. A stream the server
        ends at its maximum lifetime (``event: expired``) is reopened."""
        renewed = False
        while True:
            with self._http.stream("GET", f"{self.api_url}/ai/audio_generation/{task_id}/events",
                                   headers=self._auth(), timeout=httpx.Timeout(timeout or 3600, connect=10)) as resp:
                if resp.status_code == 401 and not renewed and self._renew():
                    renewed = True
                    continue
                if resp.status_code != 200:
                    resp.read()
                    raise self._error(resp)
                event, expired = "message", False
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                        expired = event == "expired"
                    elif line.startswith("data:") and not expired:
                        yield event, json.loads(line[5:])
                if not expired:
                    return

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------
    def _auth(self) -> dict:
        if self._access is None:
            self._login()
        return {"Authorization": f"Bearer {self._access}"}

    def _login(self) -> None:
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        data = self._send("POST", "/user/login", headers={"Authorization": f"Basic {basic}"})["data"]
        self._access, self._refresh = data["access_token"], data["refresh_token"]

    def _renew(self) -> bool:
        """After a 401: refresh the access token (or log in again); False with an API key."""
        if self.api_key:
            return False
        if self._refresh:
            try:
                data = self._send("POST", "/user/refresh_token", data={"refresh_token": self._refresh})["data"]
                self._access, self._refresh = data["access_token"], data["refresh_token"]
                return True
            except SoundryError:
                pass
        self._login()
        return True

    def _request(self, method: str, path: str, **kw) -> dict:
        try:
            return self._send(method, path, headers=self._auth(), **kw)
        except SoundryError as exc:
            if exc.status == 401 and self._renew():
                return self._send(method, path, headers=self._auth(), **kw)
            raise

    def _send(self, method: str, path: str, **kw) -> dict:
        try:
            resp = self._http.request(method, self.api_url + path, **kw)
        except httpx.TransportError as exc:
            raise ServerUnavailableError(f"cannot reach {self.api_url}: {exc}", "unreachable") from exc
        if resp.status_code >= 400:
            raise self._error(resp)
        return resp.json()

    @staticmethod
    def _error(resp: httpx.Response) -> SoundryError:
        try:
            body = resp.json()
            code = (body.get("errors") or ["error"])[0]
            description = body.get("error_description") or resp.reason_phrase
        except (ValueError, AttributeError):
            code, description = "error", f"HTTP {resp.status_code}: {resp.text[:200]}"
        retry = resp.headers.get("retry-after")
        return error_for(resp.status_code, code, description, float(retry) if retry else None)
