"""``whisper-at serve``: an OpenAI-compatible HTTP API (with sound-event tags) and a web page.

One model is loaded once and shared; it is not thread-safe, so jobs run one at a time on a
single worker thread. A request holds a *slot* from the moment it is admitted (before its
upload is read) until its job has really stopped, and at most ``1 + max_queue`` slots exist:
a full server answers 503 with ``Retry-After`` instead of piling work up. Uploads are
streamed to a private folder on disk that is removed when the slot is freed. A client that
disconnects, or a request that runs past its timeout, sets the job's cancel flag, which
the transcription checks at every decoded segment (docs/serving.md).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import io
import json
import logging
import math
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles
from whisper.tokenizer import LANGUAGES
from whisper.utils import WriteSRT, WriteVTT

from . import __version__
from .audio import AudioError, audio_duration
from .captions import CAPTION_WRITERS, CaptionStyle, result_cues
from .pipeline import WhisperAT
from .tagging import TaggingResult, Threshold, TrackOptions, bins_per_window
from .writers import tag_windows_json

logger = logging.getLogger("whisper_at")

API_KEY_ENV = "WHISPER_AT_API_KEY"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
# OpenAI clients name their model "whisper-1"; it is accepted as an alias of the served one.
MODEL_ALIASES = ("whisper-1",)
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
CURVE_CLASSES = 8  # classes whose probabilities over time the responses plot
MAX_FIELD_BYTES = 64 * 1024  # a form field other than the file (a prompt, a language)


@dataclass
class ServerConfig:
    """Limits and options of one server (the `whisper-at serve` flags)."""

    api_key: str | None = None  # bearer key for /v1/*; None: no auth
    max_upload_bytes: int = 100 * 2**20
    max_duration: float = 3 * 3600.0  # seconds of audio per request
    max_queue: int = 4  # admitted jobs waiting behind the running one
    timeout: float = 900.0  # seconds per request, upload to answer
    retry_after: int = 10  # seconds, sent with 503 when full
    temp_dir: str | None = None  # parent of the per-request upload folders (default: system)
    at_time_res: float = 10.0  # default tag window, seconds
    top_k: int = 5
    threshold: Threshold = "auto"


class ApiError(Exception):
    """An error answered in OpenAI's error JSON shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class JobCancelled(Exception):
    """Raised inside a job when its client left or its time ran out."""


@dataclass
class Upload:
    """A request's form: the fields, and the file part streamed into a private folder."""

    folder: Path
    fields: dict[str, list[str]] = field(default_factory=dict)
    path: Path | None = None
    filename: str = "upload"

    def value(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else default


class Slots:
    """Admission: at most ``capacity`` requests hold a slot (uploading, queued or running)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held: set[Slot] = set()
        self._lock = threading.Lock()

    def acquire(self, slot: Slot) -> bool:
        with self._lock:
            if len(self.held) >= self.capacity:
                return False
            self.held.add(slot)
            return True

    def release(self, slot: Slot) -> None:
        with self._lock:
            self.held.discard(slot)

    def cancel_all(self) -> None:
        """At shutdown: every queued job dropped, every running one stopped."""
        with self._lock:
            jobs = [slot.job for slot in self.held if slot.job is not None]
        for job in jobs:
            job.cancel()


class Slot:
    """One admitted request: its upload folder and its place; freed exactly once."""

    def __init__(self, slots: Slots, temp_dir: str | None) -> None:
        self.slots = slots
        self.folder = Path(tempfile.mkdtemp(prefix="whisper-at-", dir=temp_dir))
        self.job: Job | None = None  # once its upload is in
        self._freed = False
        self._lock = threading.Lock()

    def free(self) -> None:
        with self._lock:
            if self._freed:
                return
            self._freed = True
        shutil.rmtree(self.folder, ignore_errors=True)
        self.slots.release(self)


class Job:
    """Work for the model's thread; ``cancel()`` stops it at its next decoded segment."""

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        slot: Slot,
        work: Callable[[Job], Any],
        on_segment: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cancelled = threading.Event()
        self.on_segment = on_segment  # gets each decoded segment (a stream's feed)
        self.future = executor.submit(self._run, work)
        # frees the slot once the work has really stopped (or was dropped from the queue)
        self.future.add_done_callback(lambda _: slot.free())
        slot.job = self

    def _run(self, work: Callable[[Job], Any]) -> Any:
        self.check()
        return work(self)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled

    def cancel(self) -> None:
        self.cancelled.set()
        self.future.cancel()  # drops it if it has not started; a running one sees the flag


async def read_upload(request: Request, folder: Path, max_bytes: int) -> Upload:
    """Parse a multipart body as it arrives: fields in memory, the file part to disk."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(400, "expected a multipart/form-data body (an audio file and fields)")
    upload = Upload(folder)
    state: dict[str, Any] = {"name": None, "buffer": None, "file": None, "header": b""}
    headers: dict[bytes, bytes] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        name = state["header"].lower()
        headers[name] = headers.get(name, b"") + data[start:end]

    def on_header_end() -> None:
        state["header"] = b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        headers.clear()
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" in disposition:
            if upload.path is not None:
                raise ApiError(400, "send one file per request", param=name)
            upload.filename = Path(disposition[b"filename"].decode("utf-8", "replace")).name
            suffix = "".join(
                c for c in Path(upload.filename).suffix[:10] if c.isalnum() or c == "."
            )
            upload.path = folder / f"upload{suffix}"
            state["file"] = open(upload.path, "wb")  # noqa: SIM115 (closed in on_part_end)
        else:
            state["buffer"] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["file"] is not None:
            state["file"].write(data[start:end])
        else:
            state["buffer"] += data[start:end]
            if len(state["buffer"]) > MAX_FIELD_BYTES:
                raise ApiError(
                    400, f"form field {state['name']!r} is too long", param=state["name"]
                )

    def on_part_end() -> None:
        if state["file"] is not None:
            state["file"].close()
            state["file"] = None
        else:
            text = bytes(state["buffer"]).decode("utf-8", "replace")
            upload.fields.setdefault(state["name"], []).append(text)

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise ApiError(400, f"malformed multipart/form-data body: {e}") from e
    finally:
        if state["file"] is not None:
            state["file"].close()
    return upload


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, f"the upload is larger than the limit of {max_bytes / 2**20:g} MiB", code="too_large"
    )


def class_curves(tagging: TaggingResult, n: int = CURVE_CLASSES) -> list[dict[str, Any]]:
    """The ``n`` reported classes that reach the highest probability, with their probability
    in every tag window: what the page plots over time."""
    if tagging.logits.shape[0] == 0:
        return []
    probabilities = tagging.probabilities
    reported = tagging.reported_classes
    peaks = probabilities[:, reported].max(dim=0).values
    order = peaks.argsort(descending=True)[:n].tolist()
    return [
        {
            "label": tagging.labels.names[reported[j]],
            "index": reported[j],
            "probabilities": [round(float(p), 4) for p in probabilities[:, reported[j]]],
        }
        for j in order
    ]


def tag_fields(tagging: TaggingResult, top_k: int, threshold: Threshold) -> dict[str, Any]:
    """What a response adds about sound: tag windows, the top classes over time, and the
    sound events (onsets and offsets on the 0.4 s grid, whisper_at.events' defaults)."""
    fields = {
        "at_time_res": tagging.at_time_res,
        "tags": tag_windows_json(tagging, top_k, threshold),
        "class_curves": class_curves(tagging),
    }
    if tagging.track is not None:
        fields["sound_events"] = [asdict(event) for event in tagging.events()]
    return fields


def verbose_body(
    result: dict[str, Any], words: bool, top_k: int, threshold: Threshold
) -> dict[str, Any]:
    """OpenAI's ``verbose_json``, plus the sound fields (which OpenAI clients ignore)."""
    segments = []
    all_words = []
    for segment in result["segments"]:
        segments.append({k: v for k, v in segment.items() if k != "words"})
        all_words.extend(
            {"word": w["word"], "start": w["start"], "end": w["end"]}
            for w in segment.get("words") or ()
        )
    duration = result.get("duration")
    if duration is None:
        duration = segments[-1]["end"] if segments else 0.0
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGES.get(result["language"], result["language"]),
        "duration": duration,
        "text": result["text"],
        "segments": segments,
    }
    if words:
        body["words"] = all_words
    if result.get("audio_tag") is not None:
        body.update(tag_fields(TaggingResult.from_result(result), top_k, threshold))
    if "sound_events" in result:
        body["caption_cues"] = [asdict(cue) for cue in result_cues(result)]
    body["whisper_at"] = result.get("whisper_at")
    return body


def subtitles(result: dict[str, Any], response_format: str, captions: bool = False) -> str:
    """SRT or WebVTT text, as the CLI's files: the dialogue by openai-whisper's own writers,
    or with ``captions`` the captions with sound cues (whisper_at.captions)."""
    if captions:
        return CAPTION_WRITERS[response_format](result_cues(result, CaptionStyle()))
    writer = (WriteSRT if response_format == "srt" else WriteVTT)(".")
    text = io.StringIO()
    writer.write_result(result, text, {"max_line_width": None, "max_line_count": None})
    return text.getvalue()


def _number(upload: Upload, name: str, default: float) -> float:
    text = upload.value(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number, got {text!r}", param=name)
    return value


def _flag(upload: Upload, name: str) -> bool:
    text = (upload.value(name) or "false").lower()
    if text not in ("true", "false"):
        raise ApiError(400, f"{name} must be true or false, got {text!r}", param=name)
    return text == "true"


@dataclass
class TagOptions:
    at_time_res: float
    top_k: int
    threshold: Threshold


def tag_options(upload: Upload, config: ServerConfig) -> TagOptions:
    """``at_time_res``, ``top_k`` and ``threshold`` form fields, checked as the CLI checks them."""
    at_time_res = _number(upload, "at_time_res", config.at_time_res)
    try:
        bins_per_window(at_time_res)
    except ValueError as e:
        raise ApiError(400, str(e), param="at_time_res") from e
    top_k = _number(upload, "top_k", config.top_k)
    if top_k < 1 or top_k != int(top_k):
        raise ApiError(400, f"top_k must be a whole number >= 1, got {top_k:g}", param="top_k")
    text = upload.value("threshold")
    threshold: Threshold = config.threshold
    if text not in (None, "", "auto"):
        threshold = _number(upload, "threshold", 0.0)
        if not 0.0 <= threshold <= 1.0:
            raise ApiError(
                400, "threshold must be auto or a probability in [0, 1]", param="threshold"
            )
    elif text == "auto":
        threshold = "auto"
    return TagOptions(at_time_res, int(top_k), threshold)


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Server:
    """The state behind the routes: the model, its worker thread and the slots."""

    def __init__(self, model: WhisperAT, config: ServerConfig) -> None:
        self.model, self.config = model, config
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="whisper-at")
        self.slots = Slots(1 + config.max_queue)
        if config.temp_dir is not None:
            Path(config.temp_dir).mkdir(parents=True, exist_ok=True)

    def check_key(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key (send Authorization: Bearer KEY)",
                code="invalid_api_key",
            )

    def admit(self, request: Request) -> Slot:
        """A slot for this request, or 413 / 503 before any of its body is read."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.config.max_upload_bytes:
            raise too_large(self.config.max_upload_bytes)
        slot = Slot(self.slots, self.config.temp_dir)
        if not self.slots.acquire(slot):
            slot.free()
            raise ApiError(
                503,
                f"the server is busy ({self.slots.capacity} requests admitted); retry later",
                type="server_busy",
                code="busy",
                headers={"Retry-After": str(self.config.retry_after)},
            )
        return slot

    async def receive_audio(self, request: Request, slot: Slot) -> Upload:
        """The upload, checked: present, decodable, not longer than the limit."""
        upload = await read_upload(request, slot.folder, self.config.max_upload_bytes)
        if upload.path is None:
            raise ApiError(400, "no audio file in the request (form field 'file')", param="file")
        try:
            duration = await asyncio.to_thread(audio_duration, upload.path)
        except AudioError as e:
            raise ApiError(400, user_message(e, upload), param="file") from e
        if duration > self.config.max_duration:
            raise ApiError(
                413,
                f"{upload.filename}: {duration:.1f} s of audio is longer than the limit of "
                f"{self.config.max_duration:g} s",
                param="file",
                code="too_long",
            )
        return upload

    async def finish(self, request: Request, job: Job, deadline: float) -> Any:
        """The job's result; its client leaving or the deadline cancels it."""
        waiting = asyncio.wrap_future(job.future)
        # a job given up on may still end in an error later: nobody needs to hear of it
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
        left = asyncio.ensure_future(wait_disconnect(request))
        try:
            done, _ = await asyncio.wait(
                {waiting, left},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if waiting not in done:
                job.cancel()
                if left in done:
                    raise JobCancelled
                raise timed_out(self.config.timeout)
            return waiting.result()
        finally:
            left.cancel()
            if not waiting.done():
                job.cancel()


async def wait_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body has been read, so only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def timed_out(timeout: float) -> ApiError:
    return ApiError(504, f"the request took longer than the limit of {timeout:g} s", code="timeout")


def user_message(error: Exception, upload: Upload) -> str:
    """The runtime's message, naming the uploaded file as the CLI names a file it is given."""
    return str(error).replace(str(upload.path), upload.filename)


def create_app(model: WhisperAT, config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app: the API under /v1, /health, and the web page at /."""
    config = config or ServerConfig()
    server = Server(model, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.slots.cancel_all()  # so that stopping the server does not wait for them
        server.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="whisper-at", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return ApiError(error.status_code, str(error.detail)).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        logger.error("unexpected error on %s: %r", request.url.path, error)
        return ApiError(500, f"internal error: {error}", type="server_error").response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return ApiError(400, str(error)).response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model.name,
            "version": __version__,
            "jobs": len(server.slots.held),
            "capacity": server.slots.capacity,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_key(request)
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "whisper-at"}
                for name in (model.name, *MODEL_ALIASES)
            ],
        }

    @app.get("/v1/config")
    async def page_config(request: Request) -> dict[str, Any]:
        """What the page needs to know: the model, the limits, whether a key is needed."""
        return {
            "model": model.name,
            "tags": model.head is not None,
            "auth": config.api_key is not None,
            "max_upload_bytes": config.max_upload_bytes,
            "max_duration": config.max_duration,
            "at_time_res": config.at_time_res,
        }

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        server.check_key(request)
        deadline = time.monotonic() + config.timeout
        slot = server.admit(request)
        job = None
        try:
            upload = await server.receive_audio(request, slot)
            form = TranscriptionForm.read(upload, model, config)
            if form.stream:
                feed = SegmentFeed(asyncio.get_running_loop())
                job = Job(server.executor, slot, form.work(model, upload), feed.put)
                feed.follow(job)
                return StreamingResponse(
                    form.events(job, feed, deadline, config.timeout),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            job = Job(server.executor, slot, form.work(model, upload))
            result = await server.finish(request, job, deadline)
            return form.response(result)
        except (ClientDisconnect, JobCancelled):
            logger.info("a client left before its transcription was done")
            return Response(status_code=499)
        finally:
            if job is None:
                slot.free()

    @app.post("/v1/audio/tags")
    async def tags(request: Request) -> Response:
        server.check_key(request)
        if model.head is None:
            raise ApiError(400, f"no tagging head is installed for {model.name}")
        deadline = time.monotonic() + config.timeout
        slot = server.admit(request)
        job = None
        try:
            upload = await server.receive_audio(request, slot)
            options = tag_options(upload, config)

            def work(job: Job) -> TaggingResult:
                # tagging has no per-segment hook: it runs to its end, bounded by max_duration
                return model.tag(upload.path, options.at_time_res, track_options=TrackOptions())

            job = Job(server.executor, slot, work)
            try:
                tagging = await server.finish(request, job, deadline)
            except ValueError as e:
                raise ApiError(400, user_message(e, upload), param="file") from e
            return JSONResponse(
                {
                    "duration": tagging.duration,
                    **tag_fields(tagging, options.top_k, options.threshold),
                    "whisper_at": tagging.made_by,
                }
            )
        except (ClientDisconnect, JobCancelled):
            logger.info("a client left before its tags were done")
            return Response(status_code=499)
        finally:
            if job is None:
                slot.free()

    web = files("whisper_at") / "web"
    app.mount("/", StaticFiles(directory=str(web), html=True), name="web")
    return app


@dataclass
class TranscriptionForm:
    """The fields of a transcription request (OpenAI's, plus the tag options)."""

    response_format: str
    stream: bool
    words: bool
    captions: bool
    tag: TagOptions
    options: dict[str, Any]

    @classmethod
    def read(cls, upload: Upload, model: WhisperAT, config: ServerConfig) -> TranscriptionForm:
        name = upload.value("model", "whisper-1")
        if name not in (model.name, *MODEL_ALIASES):
            raise ApiError(
                404,
                f"model {name!r} is not served here; this server serves {model.name!r} "
                f"(also reachable as {', '.join(MODEL_ALIASES)})",
                param="model",
                code="model_not_found",
            )
        response_format = upload.value("response_format") or "json"
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(
                400,
                f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                f"got {response_format!r}",
                param="response_format",
            )
        granularities = set(upload.fields.get("timestamp_granularities[]", [])) | set(
            upload.fields.get("timestamp_granularities", [])
        )
        unknown = granularities - {"segment", "word"}
        if unknown:
            raise ApiError(
                400,
                f"timestamp_granularities must be segment or word, got {sorted(unknown)}",
                param="timestamp_granularities",
            )
        stream, captions = _flag(upload, "stream"), _flag(upload, "captions")
        if captions and model.head is None:
            raise ApiError(
                400,
                f"captions with sound cues need a tagging head; none is installed for {model.name}",
                param="captions",
            )
        temperature = _number(upload, "temperature", 0.0)
        if not 0.0 <= temperature <= 1.0:
            raise ApiError(400, "temperature must be between 0 and 1", param="temperature")
        options: dict[str, Any] = {
            # as OpenAI's API: 0 lets the decoder raise the temperature when it fails
            "temperature": FALLBACK_TEMPERATURES if temperature == 0 else temperature,
            # captions time their cues by the words, as `whisper-at --captions` does
            "word_timestamps": "word" in granularities or captions,
            "verbose": None,
        }
        language = upload.value("language")
        if language:
            if language not in LANGUAGES:
                raise ApiError(
                    400,
                    f"language must be an ISO-639-1 code such as en, got {language!r}",
                    param="language",
                )
            options["language"] = language
        if upload.value("prompt"):
            options["initial_prompt"] = upload.value("prompt")
        return cls(
            response_format,
            stream,
            "word" in granularities,
            captions,
            tag_options(upload, config),
            options,
        )

    def work(self, model: WhisperAT, upload: Upload) -> Callable[[Job], dict[str, Any]]:
        """The job: the model's transcription, stopping at the first segment after a cancel."""

        def run(job: Job) -> dict[str, Any]:
            def on_segment(segment: dict[str, Any]) -> None:
                job.check()
                if job.on_segment is not None:
                    job.on_segment(segment)

            try:
                return model.transcribe(
                    str(upload.path),
                    self.tag.at_time_res,
                    tags_per_segment=self.tag.top_k,
                    on_segment=on_segment,
                    track_options=TrackOptions(),  # the page and verbose_json show events
                    **self.options,
                )
            except ValueError as e:  # AudioError among them: what the CLI reports as the file's
                raise ApiError(400, user_message(e, upload), param="file") from e

        return run

    def response(self, result: dict[str, Any]) -> Response:
        if self.response_format == "json":
            return JSONResponse({"text": result["text"]})
        if self.response_format == "text":
            return PlainTextResponse(result["text"])
        if self.response_format in ("srt", "vtt"):
            return PlainTextResponse(subtitles(result, self.response_format, self.captions))
        return JSONResponse(verbose_body(result, self.words, self.tag.top_k, self.tag.threshold))

    async def events(
        self, job: Job, feed: SegmentFeed, deadline: float, timeout: float
    ) -> AsyncIterator[str]:
        """Server-sent events: a ``transcript.text.delta`` per decoded segment (with the
        segment), then ``transcript.text.done`` with the whole verbose result's fields."""
        try:
            while True:
                left = deadline - time.monotonic()
                try:
                    segment = await asyncio.wait_for(feed.queue.get(), timeout=max(0.0, left))
                except TimeoutError:
                    yield sse(timed_out(timeout).body())
                    return
                if segment is None:
                    break
                segment.pop("words", None)
                yield sse(
                    {"type": "transcript.text.delta", "delta": segment["text"], "segment": segment}
                )
            try:
                result = job.future.result()
            except ApiError as e:
                yield sse(e.body())
                return
            except Exception as e:  # the stream has begun: the error goes in it
                logger.exception("transcription failed")
                yield sse(ApiError(500, f"transcription failed: {e}", type="server_error").body())
                return
            body = verbose_body(result, self.words, self.tag.top_k, self.tag.threshold)
            yield sse({"type": "transcript.text.done", **body})
        finally:
            job.cancel()  # a no-op once it is done; stops it if the client went away


class SegmentFeed:
    """Carries segments from the model's thread to a stream; ``None`` marks the job's end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def put(self, segment: dict[str, Any] | None) -> None:
        self.loop.call_soon_threadsafe(
            self.queue.put_nowait, None if segment is None else dict(segment)
        )

    def follow(self, job: Job) -> None:
        job.future.add_done_callback(lambda _: self.put(None))


class BackgroundServer:
    """Runs an app on a free loopback port in a thread: for tests, benchmarks and notebooks.

    >>> with BackgroundServer(create_app(model)) as server:
    ...     httpx.get(server.url + "/health")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1") -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, 0))
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread stopped before it started")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


def build_serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-at serve",
        description="Serve an OpenAI-compatible transcription API with sound-event tags, and "
        "a web page at /. See docs/serving.md.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--model", default="tiny.en", help="Whisper name or local path")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--engine", default="auto", help="ct2, torch or auto (docs/engines.md)")
    parser.add_argument("--precision", default="auto", help="as whisper-at --precision")
    parser.add_argument(
        "--api-key",
        help=f"require Authorization: Bearer KEY on /v1/* (default: ${API_KEY_ENV} if set)",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=100.0, help="largest upload in MiB (default: 100)"
    )
    parser.add_argument(
        "--max-duration",
        type=float,
        default=ServerConfig.max_duration,
        help="longest audio in seconds (default: 10800)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=ServerConfig.max_queue,
        help="requests waiting behind the running one before 503 (default: 4)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=ServerConfig.timeout,
        help="seconds per request before 504 (default: 900)",
    )
    parser.add_argument("--temp-dir", help="where uploads are kept while they are processed")
    parser.add_argument("--debug", action="store_true", help="debug logs")
    return parser


def main(argv: list[str]) -> int:
    """``whisper-at serve``: usage errors exit 2 before the model loads."""
    from .pipeline import load_model
    from .weights import WeightsError

    parser = build_serve_parser()
    args = parser.parse_args(argv)
    for name in ("max_upload_mb", "max_duration", "timeout"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.max_queue < 0:
        parser.error("--max-queue must be 0 or more")
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    config = ServerConfig(
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_duration=args.max_duration,
        max_queue=args.max_queue,
        timeout=args.timeout,
        temp_dir=args.temp_dir,
    )
    try:
        model = load_model(
            args.model, device=args.device, engine=args.engine, precision=args.precision
        )
    except (WeightsError, ValueError, TypeError) as e:
        print(f"whisper-at: error: {e}", file=sys.stderr)
        return 2
    logger.info(
        "serving %s on http://%s:%d/ (%s)",
        model.name,
        args.host,
        args.port,
        "API key required" if config.api_key else "no API key",
    )
    uvicorn.run(create_app(model, config), host=args.host, port=args.port, log_level="info")
    return 0
