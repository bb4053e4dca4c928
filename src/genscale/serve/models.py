"""The models a server holds: each loaded once from its run's newest intact checkpoint (safetensors, no
unpickling) and kept warm, and the one worker thread that runs their requests, batching those that can share a
forward.

A request is decoded by the app, predicted here, and encoded by the app again (litgpt's decode -> predict -> encode):
this module knows samplers, not HTTP.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genscale.errors import GenscaleError
from genscale.families import Sampler, family_of
from genscale.paths import read_json

if TYPE_CHECKING:
    from genscale.registry import ModelVersion


@dataclass(frozen=True)
class ImageJob:
    """n images of one seed; `label` and `steps` as ImageSampler.images takes them."""

    n: int
    seed: int
    label: int | None
    steps: int | None

    def key(self) -> tuple:  # jobs with one key share a forward
        return ("image", self.label, self.steps)


@dataclass(frozen=True)
class TextJob:
    """n continuations of one prompt; streamed jobs are run alone and hand each new piece of text to `emit`."""

    prompt: str
    n: int
    seed: int
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    emit: Callable[[int, str], None] | None = None  # (row, text piece): streaming
    stopped: Callable[[], bool] = lambda: False  # the client went away, or the request's time is up

    def key(self) -> tuple:
        return ("text", self.temperature, self.top_k, self.top_p) if self.emit is None else ("stream", id(self))


_STOP = object()  # queued by Worker.stop: the thread ends


@dataclass
class _Pending:
    model: ServedModel
    job: ImageJob | TextJob
    future: Future
    deadline: float

    def key(self) -> tuple:  # requests with one key may share a forward
        return (self.model.name, *self.job.key())


@dataclass
class ServedModel:
    """A model under its served name: its facts (registry version or run) and its sampler."""

    name: str
    info: dict[str, Any]
    sampler: Sampler

    @property
    def kind(self) -> str:
        return self.sampler.kind

    def predict(self, jobs: list[Any]) -> list[Any]:
        """Jobs of one key in one forward: a list of uint8 image tensors, or of texts, per job."""
        if isinstance(jobs[0], ImageJob):
            j = jobs[0]
            return self.sampler.images_many([(job.n, job.seed) for job in jobs], label=j.label, steps=j.steps)
        return self.sampler.texts_many(jobs)


@dataclass
class Worker:
    """The one thread that runs every served model's forwards, oldest request first, each forward joined by the
    queued requests of the same model and key (up to max_batch rows).

    One thread for all models, not one per model: PyTorch's CPU kernels run on an OpenMP team per calling thread,
    and while another live thread holds a team of its own a model runs slower (a GPT's 200-token generation 1.9-2.1x
    in isolation, a served 16-image DDIM-50 1.25x; benchmarks/README.md (v)). Requests are batched from what is
    queued when a forward starts (`batch_wait` 0): a request alone pays no wait, and under load the queue fills while
    the previous forward runs.
    """

    max_batch: int = 16  # rows (images, or continuations) one forward may hold
    batch_wait: float = 0.0  # seconds to wait for more requests before a forward (0: what is queued)
    on_batch: Callable[[str, int], None] = lambda name, rows: None  # (model, rows): the batch-size histogram
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="genscale-serve-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(_STOP)

    def submit(self, model: ServedModel, job: ImageJob | TextJob, *, seconds: float) -> Future:
        """Queue a job; its future holds what `model.predict` gives it. A job still queued when its `seconds` are up
        is dropped (its future's exception a TimeoutError)."""
        future: Future = Future()
        self._queue.put(_Pending(model, job, future, time.monotonic() + seconds))
        return future

    def _work(self) -> None:
        waiting: deque[_Pending] = deque()  # taken from the queue, not run yet: oldest first
        while True:
            if not waiting:
                item = self._queue.get()
                if item is _STOP:
                    return
                waiting.append(item)
            if self.batch_wait:
                time.sleep(self.batch_wait)
            while True:  # everything queued by now joins the choice
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    return
                waiting.append(item)
            first = waiting.popleft()
            batch, rows, kept = [first], first.job.n, deque()
            while waiting:
                p = waiting.popleft()
                if p.key() == first.key() and rows + p.job.n <= self.max_batch:
                    batch.append(p)
                    rows += p.job.n
                else:
                    kept.append(p)
            waiting = kept
            self._run([p for p in batch if self._live(p)])

    @staticmethod
    def _live(p: _Pending) -> bool:
        if time.monotonic() > p.deadline:
            p.future.set_exception(TimeoutError("queued past the request's time limit"))
            return False
        return p.future.set_running_or_notify_cancel()

    def _run(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        model = batch[0].model
        self.on_batch(model.name, sum(p.job.n for p in batch))
        try:
            results = model.predict([p.job for p in batch])
        except Exception as e:  # a GenscaleError is the caller's 4xx; anything else its 5xx
            for p in batch:
                p.future.set_exception(e)
            return
        for p, result in zip(batch, results, strict=True):
            p.future.set_result(result)


def run_info(run_dir: Path) -> dict[str, Any]:
    """What a served run shows beside its samples: family, data version, metrics with their extractor, the gate."""
    from genscale.pipeline import load_run, tracked_run_id

    run_dir, cfg = load_run(str(run_dir))
    summary = _json_or_empty(run_dir / "summary.json")
    metrics = {k: {"value": v["value"], "extractor": v.get("extractor")}
               for k, v in _json_or_empty(run_dir / "metrics.json").items() if isinstance(v, dict) and "value" in v}
    return {"run_id": tracked_run_id(run_dir), "run_dir": str(run_dir), "family": cfg.model.family,
            "kind": family_of(cfg).data_kind, "dataset": summary.get("dataset"),
            "dataset_version": summary.get("dataset_version"), "metrics": metrics,
            "gate": _json_or_empty(run_dir / "gate.json") or None}


def _json_or_empty(path: Path) -> dict:
    return read_json(path, path.stem) if path.exists() else {}


def find_model(spec: str) -> tuple[ModelVersion | None, Path]:
    """(registry version, run folder) of a model spec: an existing run folder, else a registry model (NAME,
    NAME@ALIAS, NAME/VERSION), else a run id or unique id prefix (version None for a run)."""
    from genscale import registry
    from genscale.pipeline import load_run

    if not Path(spec).is_dir():
        try:
            version = registry.resolve(spec)
            return version, version.run_dir
        except registry.NotRegistered:
            pass
    try:
        run_dir, _ = load_run(spec)
    except GenscaleError:
        raise GenscaleError(f"model '{spec}': neither a registered model nor a run (genscale models list; "
                            "genscale runs)") from None
    return None, run_dir


def load_model(spec: str, *, device: str | None = None) -> tuple[str, dict[str, Any], Sampler]:
    """(served name, facts, sampler) of a model spec (find_model); a run is served under its run id."""
    from genscale.pipeline import load_run, load_sampler
    from genscale.train.machinery import select_device

    version, run_dir = find_model(spec)
    if version is not None:
        name, info = version.name, version.as_dict()
    else:
        info = run_info(run_dir)
        name = info["run_id"] or run_dir.name
    run_dir, cfg = load_run(str(run_dir))
    sampler, step = load_sampler(run_dir, cfg, select_device(device or cfg.train.device))
    return name, {"name": name, **info, "step": step, **_options(sampler)}, sampler


def _options(sampler: Sampler) -> dict[str, Any]:
    """What a request to this model may set, for /models and the web page."""
    if sampler.kind == "image":
        return {"classes": sampler.classes, "steps": sampler.steps}
    return {"block_size": sampler.model.config.block_size, "vocab_size": sampler.model.config.vocab_size}


def stream_pieces(ids: Iterator[list[int]], decode: Callable[[list[int]], str], rows: int
                  ) -> Iterator[tuple[int, str]]:
    """(row, new text) as tokens arrive: each row's text decoded whole and the new suffix handed on, held back while
    it ends in a partial UTF-8 character (a byte-level BPE token can be half a character)."""
    tokens: list[list[int]] = [[] for _ in range(rows)]
    sent = [0] * rows
    for step in ids:
        for row, token in enumerate(step):
            tokens[row].append(token)
            text = decode(tokens[row])
            if text.endswith("\ufffd"):
                continue
            if len(text) > sent[row]:
                yield row, text[sent[row]:]
                sent[row] = len(text)
