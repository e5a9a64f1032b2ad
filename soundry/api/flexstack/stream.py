"""``GET /v1/ai/audio_generation/{task_id}/stream``: a task's audio while it is generated.

The live stream is WAV (PCM 16-bit, the model's rate and channels) whose header states the clip's
final length: WAV needs no encoder (no added latency, and the samples are the decoder's own), and
Chromium's <audio>, Firefox, ffplay and VLC all play a WAV progressively as it downloads, seeking
within what has arrived. Ogg/Opus or MP3 would be ~10x smaller, but their encoders buffer frames
(and libsndfile's MP3 writer rewrites its header at the end). At 16 kHz mono the stream is 32 kB/s.
``output_format`` therefore applies to the stored file only; a finished task streams that file.
Where the audio comes from: this process, Redis (workers on a Redis broker) or nowhere — see docs/streaming.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from soundry.api.flexstack.tasks import _own_task, stored_file_response
from soundry.api.http.auth import current_user, services
from soundry.api.http.docs import answers
from soundry.api.http.envelope import ApiError
from soundry.api.http.live import first_audio
from soundry.api.http.streams import ReleasingResponse
from soundry.audio.chunk_encode import pcm16, wav_header
from soundry.signing import verify
from soundry.tasks.live_audio import AudioChannel

router = APIRouter(prefix="/v1", tags=["audio generation"])


@router.get("/ai/audio_generation/{task_id}/stream", response_class=StreamingResponse,
            summary="The task's audio as it is generated",
            description="While the task runs (embedded mode, or workers on a Redis broker): `audio/wav` (PCM 16-bit "
                        "at the model's rate, the "
                        "header giving the final length), sent as the engine produces it — play it with an <audio> "
                        "element, ffplay or VLC (the task's `url_stream` needs no auth header). The answer starts "
                        "when the first second of audio exists. A task "
                        "that has finished (or whose worker gets tasks from RabbitMQ) answers its stored file, in "
                        "its `output_format`, once it is COMPLETED (410 if that file is no longer stored). FAILED or "
                        "CANCELED tasks answer 409. A diffusion model (Stable Audio: `streams_live` false in the "
                        "model list) denoises the whole clip together, so its stream answers the stored file once "
                        "the task is COMPLETED: the audio comes once it exists, not while it is made. The live "
                        "audio is the decoder's output before level normalisation and may differ slightly from the "
                        "stored file (see docs/streaming.md). Open streams are capped per task owner "
                        "(`max_audio_streams_per_user`, 429 `too_many_streams`), apart from those of its signed "
                        "link (the same cap per link), and in all (`max_audio_streams`, 503).",
            responses={**answers(None, 200, 401, 403, 404, 409, 410, 422, 429, 503), 200: {"content": {
                "audio/wav": {}, "audio/flac": {}, "audio/ogg": {}, "audio/mpeg": {}}}})
async def stream_task(request: Request, task_id: str,
                      expires: int | None = Query(None, description="with `sig`: the task's signed `url_stream`"),
                      sig: str | None = Query(None, max_length=128)):
    svc = services(request)
    if expires is None and sig is None:
        user = await current_user(request)
        task = await run_in_threadpool(_own_task, request, task_id, user)
    else:
        reason = ("send both expires and sig" if expires is None or sig is None else
                  verify(svc.settings.secret, task_id, "stream", expires, sig))
        if reason:
            raise ApiError(403, "forbidden", reason)
        task = await run_in_threadpool(svc.store.get, task_id)
        if task is None:
            raise ApiError(404, "not_found", f"no task {task_id}")
    # counted against the owner's own streams, or apart against the signed link (shared, it cannot block them)
    key, holder = (task.user_id, "you have") if expires is None else (("link", task.id), "this link has")
    slots = request.app.state.audio_streams
    slots.reserve(key, holder)
    try:
        channel = await first_audio(request, task.id)
    except BaseException:
        slots.release(key)
        raise
    if channel is not None:
        return ReleasingResponse(lambda: slots.release(key), _wav(channel), media_type="audio/wav",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    slots.release(key)  # what is left is the stored file, a download like any other
    task = await run_in_threadpool(svc.store.get, task.id)
    if task.status != "COMPLETED":
        reason = f": {task.error}" if task.error else ""
        raise ApiError(409, "no_audio", f"task {task.id} is {task.status}{reason}")
    return await run_in_threadpool(stored_file_response, svc, task)  # 410 when the file is gone


async def _wav(channel: AudioChannel) -> AsyncIterator[bytes]:
    header = False
    async for chunk in channel.audio():
        if not header:
            header = True
            yield wav_header(channel.sample_rate, chunk.shape[0], channel.total_samples)
        yield pcm16(chunk)
