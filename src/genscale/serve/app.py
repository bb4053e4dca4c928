"""The HTTP service of `genscale serve`: a FastAPI app over the models it holds (serve/models.py).

Routes: GET /health, /ready, /models, /models/{name}, /metrics (Prometheus); POST /generate (images: a PNG grid or
base64 PNGs; text: continuations, or tokens as server-sent events) and the OpenAI-compatible POST /v1/completions;
the web page at / and the OpenAPI docs at /docs. Every limit is a 4xx whose body says which limit and its value.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from genscale.errors import GenscaleError
from genscale.models.gpt import check_temperature
from genscale.registry import MODEL_NAME
from genscale.serve.models import ImageJob, ServedModel, TextJob, Worker

NAME_PATTERN = MODEL_NAME.pattern
DEFAULT_TOKENS = 64  # new tokens of a /generate text request that names none


@dataclass(frozen=True)
class Limits:
    """What one request may ask; each is a 4xx naming it when exceeded (the CLI's --max-* options)."""

    max_images: int = 64  # images per request
    max_tokens: int = 512  # new tokens per continuation (and never past what the request's time allows)
    max_n: int = 8  # continuations per text request
    max_body_bytes: int = 64 * 1024  # request body
    request_seconds: float = 120.0  # time a request may queue and run
    max_prompt_chars: int = 8192


# --- request and response bodies -------------------------------------------------------------------------------------

class GenerateRequest(BaseModel):
    """One body for both kinds of model: the image options apply to image models, the text options to text models."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: str = Field(pattern=NAME_PATTERN, description="a served model's name (GET /models)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="the same seed and options give the same output")
    n: int = Field(1, ge=1, description="images, or continuations of the prompt")
    # images
    label: int | None = Field(None, alias="class", ge=0, description="image class (class-conditional models)")
    steps: int | None = Field(None, ge=1, description="sampling steps (step-wise samplers such as DDIM)")
    format: Literal["png", "base64"] = Field("png", description="png: one PNG grid; base64: JSON of PNGs")
    # text
    prompt: str = Field("", description="text to continue; empty: the start of a document")
    max_tokens: int | None = Field(None, ge=1, description="new tokens per continuation (default 64, or the "
                                                            "server's --max-tokens where lower)")
    temperature: float = Field(1.0, ge=0, le=100, description="0: greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = Field(False, description="text: tokens as server-sent events (data: {\"text\": ...})")


IMAGE_FIELDS = {"label", "steps", "format"}
TEXT_FIELDS = {"prompt", "max_tokens", "temperature", "top_k", "top_p", "stream"}


class ImagesResponse(BaseModel):
    model: str
    seed: int
    images: list[str] = Field(description="base64-encoded PNGs")


class TextsResponse(BaseModel):
    model: str
    seed: int
    texts: list[str]


class CompletionRequest(BaseModel):
    """OpenAI's legacy completions body (the fields a genscale model can honour; others are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(pattern=NAME_PATTERN)
    prompt: str | list[str] = ""
    max_tokens: int | None = Field(None, ge=1, description="default 16, or the server's --max-tokens where lower")
    temperature: float | None = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(1.0, gt=0, le=1)
    n: int | None = Field(1, ge=1)
    stream: bool | None = False
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


# --- the app ---------------------------------------------------------------------------------------------------------

class Metrics:
    """Prometheus series of one app (its own registry, so two apps in a process do not share counts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("genscale_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("genscale_request_seconds", "request latency (streams: to the last token)",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.batch = Histogram("genscale_batch_rows", "rows (images or continuations) per forward batch", ["model"],
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))


def _bad(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def create_app(load: Callable[[], list[ServedModel]], *, limits: Limits = Limits(), token: str | None = None,
               max_batch: int = 16) -> FastAPI:
    """The app. `load` returns the served models; it runs once, in a thread, after start-up (/ready says when it is
    done). `token`: every route but /health, /ready, the page and the docs needs `Authorization: Bearer <token>`.
    `max_batch`: rows one forward may hold when concurrent requests are batched."""
    metrics = Metrics()
    models: dict[str, ServedModel] = {}
    worker = Worker(max_batch=max_batch, on_batch=lambda name, rows: metrics.batch.labels(name).observe(rows))
    state: dict[str, Any] = {"ready": False, "error": None}

    def load_all() -> None:
        try:
            loaded = load()
            worker.start()
            models.update((m.name, m) for m in loaded)
            state["ready"] = True
        except Exception as e:  # the server stays up and says why in /ready
            state["error"] = str(e)

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load_all, name="genscale-serve-load", daemon=True).start()
        yield
        worker.stop()

    app = FastAPI(title="genscale", version=_version(), lifespan=lifespan,
                  description="Samples from genscale models that passed their quality gate. Text models also speak "
                              "OpenAI's completions protocol at /v1/completions.")

    def openapi() -> dict[str, Any]:
        """The schema, with the served models' names as the `model` field's choices once they are loaded (the docs'
        try-it-out, and a schema-driven client, then name real models)."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # builds and keeps app.openapi_schema
            if not state["ready"]:
                app.openapi_schema = None  # built again once the models are in
                return schema
            bodies = schema["components"]["schemas"]
            for body, kinds in (("GenerateRequest", ("image", "text")), ("CompletionRequest", ("text",))):
                names = sorted(k for k, m in models.items() if m.kind in kinds)
                if names:
                    bodies[body]["properties"]["model"]["enum"] = names
            for parameter in schema["paths"]["/models/{name}"]["get"]["parameters"]:
                parameter["schema"]["enum"] = sorted(models)
        return app.openapi_schema

    app.openapi = openapi

    @app.middleware("http")
    async def count_and_limit(request: Request, call_next):
        start = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            response: Response = JSONResponse(status_code=413, content={
                "detail": f"request body of {length} bytes is over the limit of {limits.max_body_bytes} bytes "
                          "(--max-body-bytes)"})
        elif length is None and "chunked" in request.headers.get("transfer-encoding", ""):
            response = JSONResponse(status_code=411, content={
                "detail": "a request body needs a Content-Length header (chunked bodies are not accepted)"})
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, str(response.status_code)).inc()
        if not isinstance(response, StreamingResponse) or path not in ("/generate", "/v1/completions"):
            metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token (Authorization: Bearer "
                                                        "$GENSCALE_TOKEN)", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorised)]

    def served(name: str) -> ServedModel:
        if name not in models:
            if not state["ready"]:
                raise _bad(503, f"model '{name}': the server is still loading its models (GET /ready)")
            raise _bad(404, f"model '{name}' is not served here (serving: {', '.join(sorted(models)) or 'none'})")
        return models[name]

    @app.get("/health", summary="the process is up")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="every model is loaded", responses={503: {"description": "still loading, or failed"}})
    def ready() -> JSONResponse:
        body = {"ready": state["ready"], "models": sorted(models), "error": state["error"]}
        return JSONResponse(status_code=200 if state["ready"] else 503, content=body)

    @app.get("/models", dependencies=auth, summary="the served models with their metrics, gate and data version")
    def list_models() -> dict[str, list[dict[str, Any]]]:
        return {"models": [models[k].info for k in sorted(models)]}

    @app.get("/models/{name}", dependencies=auth, summary="one served model",
             responses={404: {"description": "not served"}})
    def show_model(name: Annotated[str, Path(pattern=NAME_PATTERN)]) -> dict[str, Any]:
        return served(name).info

    @app.get("/metrics", dependencies=auth, summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def wait(model: ServedModel, future: Future) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=limits.request_seconds)
        except (asyncio.TimeoutError, TimeoutError):
            future.cancel()
            raise _bad(408, f"model '{model.name}': the request took longer than the limit of "
                            f"{limits.request_seconds:g} s (--request-seconds)") from None
        except GenscaleError as e:
            raise _bad(400, str(e)) from None

    @app.post("/generate", dependencies=auth, summary="sample images or text from a served model",
              responses={200: {"content": {"image/png": {}, "text/event-stream": {}},
                               "description": "a PNG grid (format png), JSON, or server-sent events (stream)"},
                         400: {"description": "an option the model does not take, or over a limit"},
                         404: {"description": "not served"}, 408: {"description": "over the time limit"}})
    async def generate(body: GenerateRequest, request: Request) -> Any:
        model = served(body.model)
        given = body.model_fields_set
        other = sorted((TEXT_FIELDS if model.kind == "image" else IMAGE_FIELDS) & given)
        if other:
            names = ", ".join("class" if f == "label" else f for f in other)
            raise _bad(400, f"{names}: not an option of {model.kind} model '{model.name}'")
        if model.kind == "image":
            return await _images(model, body)
        return await _texts(model, body, request)

    async def _images(model: ServedModel, body: GenerateRequest) -> Response:
        if body.n > limits.max_images:
            raise _bad(400, f"n: {body.n} is over the limit of {limits.max_images} images per request (--max-images)")
        job = ImageJob(body.n, body.seed, body.label, body.steps)
        images = await wait(model, worker.submit(model, job, seconds=limits.request_seconds))
        from genscale.pipeline import grid_png

        if body.format == "png":
            return Response(grid_png(images), media_type="image/png", headers={"X-Genscale-Seed": str(body.seed)})
        return JSONResponse(ImagesResponse(model=model.name, seed=body.seed, images=[
            base64.b64encode(grid_png(img[None], nrow=1, pad=0)).decode() for img in images]).model_dump())

    def text_job(model: ServedModel, *, prompt: str, n: int, seed: int, max_tokens: int, temperature: float,
                 top_k: int | None, top_p: float | None, emit=None, stopped=None) -> TextJob:
        if n > limits.max_n:
            raise _bad(400, f"n: {n} is over the limit of {limits.max_n} continuations per request (--max-n)")
        if max_tokens > limits.max_tokens:
            raise _bad(400, f"max_tokens: {max_tokens} is over the limit of {limits.max_tokens} (--max-tokens)")
        if len(prompt) > limits.max_prompt_chars:
            raise _bad(400, f"prompt: {len(prompt)} characters is over the limit of {limits.max_prompt_chars}")
        try:
            check_temperature(temperature)
        except GenscaleError as e:
            raise _bad(400, str(e)) from None
        deadline = time.monotonic() + limits.request_seconds  # a continuation stops generating when its time is up
        return TextJob(prompt, n, seed, max_tokens, temperature, top_k, top_p, emit,
                       stopped or (lambda: time.monotonic() > deadline))

    async def _texts(model: ServedModel, body: GenerateRequest, request: Request) -> Any:
        max_tokens = body.max_tokens or min(DEFAULT_TOKENS, limits.max_tokens)
        options = {"prompt": body.prompt, "n": body.n, "seed": body.seed, "max_tokens": max_tokens,
                   "temperature": body.temperature, "top_k": body.top_k, "top_p": body.top_p}
        if not body.stream:
            job = text_job(model, **options)
            texts = await wait(model, worker.submit(model, job, seconds=limits.request_seconds))
            return TextsResponse(model=model.name, seed=body.seed, texts=texts)
        return _stream(model, options, request, lambda row, piece: {"row": row, "text": piece},
                       done={"done": True})

    def _stream(model: ServedModel, options: dict[str, Any], request: Request, event: Callable[[int, str], dict],
                done: dict | str, last: Callable[[int], dict] | None = None) -> StreamingResponse:
        """Server-sent events: one `data:` line per new piece of text, then `done`."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        deadline = time.monotonic() + limits.request_seconds
        gone = threading.Event()
        job = text_job(model, **options, emit=lambda row, piece: loop.call_soon_threadsafe(pieces.put_nowait,
                                                                                           (row, piece)),
                       stopped=lambda: gone.is_set() or time.monotonic() > deadline)
        future = worker.submit(model, job, seconds=limits.request_seconds)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(pieces.put_nowait, None))
        start = time.perf_counter()

        async def events() -> AsyncIterator[str]:
            try:
                while (item := await pieces.get()) is not None:
                    yield f"data: {json.dumps(event(*item))}\n\n"
                error = None if future.cancelled() else future.exception()
                if error is not None:
                    message = str(error) if isinstance(error, GenscaleError | TimeoutError) else "generation failed"
                    yield f"data: {json.dumps({'error': message})}\n\n"
                if last is not None:
                    for row in range(options["n"]):
                        yield f"data: {json.dumps(last(row))}\n\n"
                yield f"data: {done if isinstance(done, str) else json.dumps(done)}\n\n"
            finally:
                gone.set()
                metrics.latency.labels(request.scope["route"].path).observe(time.perf_counter() - start)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions", dependencies=auth, summary="OpenAI-compatible completions (text models)",
              responses={200: {"content": {"text/event-stream": {}}}})
    async def completions(body: CompletionRequest, request: Request) -> Any:
        try:
            model = served(body.model)
        except HTTPException as e:
            return _openai_error(e.status_code, e.detail, "model")
        if model.kind != "text":
            return _openai_error(400, f"model '{model.name}' samples images; /v1/completions serves text models",
                                 "model")
        prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
        if len(prompts) != 1:
            return _openai_error(400, "prompt: one prompt per request (a list of one string is accepted)", "prompt")
        n = body.n or 1
        options = {"prompt": prompts[0], "n": n, "seed": 0 if body.seed is None else body.seed,
                   "max_tokens": body.max_tokens or min(16, limits.max_tokens),
                   "temperature": 1.0 if body.temperature is None else body.temperature, "top_k": None,
                   "top_p": None if body.top_p in (None, 1.0) else body.top_p}
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def choice(index: int, text: str, finish: str | None) -> dict:
            return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}

        def chunk(choices: list[dict]) -> dict:
            return {"id": ident, "object": "text_completion", "created": created, "model": model.name,
                    "choices": choices}

        try:
            if body.stream:
                return _stream(model, options, request, lambda row, piece: chunk([choice(row, piece, None)]),
                               done="[DONE]", last=lambda row: chunk([choice(row, "", "length")]))
            job = text_job(model, **options)
            texts = await wait(model, worker.submit(model, job, seconds=limits.request_seconds))
        except HTTPException as e:
            return _openai_error(e.status_code, e.detail, None)
        prompt_tokens = len(model.sampler.tokenizer.encode(prompts[0])) if prompts[0] else 0
        completion_tokens = sum(len(model.sampler.tokenizer.encode(t)) for t in texts)
        return {**chunk([choice(i, t, "length") for i, t in enumerate(texts)]),
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("genscale.serve").joinpath("page.html").read_text())

    return app


def _openai_error(status: int, message: str, param: str | None) -> JSONResponse:
    """OpenAI's error body, which its client libraries read into their exceptions."""
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": None}})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genscale")
    except PackageNotFoundError:
        return "0"
