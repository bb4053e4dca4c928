"""genscale serve against real servers on 127.0.0.1, started and stopped by the tests: every endpoint, what they
return against the samplers themselves, batching, streaming before the end, limits and auth, the OpenAI client, a
schema-driven fuzz run (schemathesis) and the web page in headless Chromium.

One store for the module: a tiny GAN that passes its gate (registered as `gan-s` by gate.register), a tiny GPT and a
tiny DDPM (served by run folder). Server `cli` is `genscale serve` in a subprocess with its default limits and no
token; server `guarded` runs in this process (its models can be slowed down or paused) with a token and small limits.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image
from test_families import IMAGE_EVAL, IMAGE_TRAIN
from test_gpt_train import write_corpus
from typer.testing import CliRunner

from conftest import gpt_config, tiny_config
from genscale.cli import app as cli
from genscale.config import RunConfig
from genscale.pipeline import load_run, load_sampler, tracked_run_id, train
from genscale.serve import Limits, create_app, served_models
from genscale.serve.models import ImageJob, ServedModel, TextJob, Worker

TOKEN = "secret"
GUARDED = Limits(max_images=4, max_tokens=24, max_n=2, max_body_bytes=2048, request_seconds=1.0)
CHROMIUM = shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"genscale serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {seconds} s")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    env = {"GENSCALE_RUNS": str(root / "runs"), "GENSCALE_DATA": str(root / "datasets")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("GENSCALE_TOKEN", raising=False)
        gan = train(tiny_config(train__steps=4, gate__register="gan-s"))
        gpt = train(gpt_config(write_corpus(root / "corpus"), train__steps=40, eval__on_train_end=False))
        ddpm = train(RunConfig.model_validate({
            "name": "tiny-ddpm", "data": {"source": "fashion-mnist", "size": 256},
            "model": {"family": "ddpm", "size": "tiny", "timesteps": 50},
            "train": {**IMAGE_TRAIN, "steps": 2}, "eval": {**IMAGE_EVAL, "sampling_steps": 5, "on_train_end": False}}))
    return SimpleNamespace(root=root, env=env, gan=gan, gpt=gpt, ddpm=ddpm, gpt_name=tracked_run_id(gpt),
                           ddpm_name=tracked_run_id(ddpm))


@pytest.fixture(autouse=True)
def _module_store(store, _isolated_runs, monkeypatch):
    for k, v in store.env.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def cli_server(store):
    """`genscale serve gan-s GPT_RUN DDPM_RUN` in a subprocess: the command a user runs."""
    port = free_port()
    env = {**os.environ, **store.env, "CI": "true"}
    env.pop("GENSCALE_TOKEN", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    exe = Path(sys.executable).with_name("genscale")
    proc = subprocess.Popen([str(exe), "serve", "gan-s", str(store.gpt), str(store.ddpm), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 120, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def guarded(store):
    """The same models behind a token and small limits, served by uvicorn in a thread of this process."""
    import uvicorn

    with pytest.MonkeyPatch.context() as mp:
        for k, v in store.env.items():
            mp.setenv(k, v)
        models = served_models(["gan-s", str(store.gpt), str(store.ddpm)])
    served = {m.name: m for m in models}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: models, limits=GUARDED, token=TOKEN),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 30)
        yield SimpleNamespace(url=url, models=served, client=httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30))
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def local_sampler(run_dir: Path):
    run_dir, cfg = load_run(str(run_dir))
    return load_sampler(run_dir, cfg, torch.device("cpu"))[0]


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def as_chw(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))


def events(response: httpx.Response) -> list[dict | str]:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --- the endpoints ---------------------------------------------------------------------------------------------------

def test_health_ready_and_the_models_with_their_facts(cli_server, store):
    assert httpx.get(f"{cli_server}/health").json() == {"status": "ok"}
    assert httpx.get(f"{cli_server}/ready").json() == {
        "ready": True, "models": sorted(["gan-s", store.gpt_name, store.ddpm_name]), "error": None}
    listed = {m["name"]: m for m in httpx.get(f"{cli_server}/models").json()["models"]}
    gan = listed["gan-s"]
    gate = json.loads((store.gan / "gate.json").read_text())
    metrics = json.loads((store.gan / "metrics.json").read_text())
    assert (gan["family"], gan["kind"], gan["version"], gan["run_id"], gan["gate"]) == (
        "gan", "image", 1, tracked_run_id(store.gan), gate)
    assert gan["metrics"]["fid_fmnist"] == {"value": metrics["fid_fmnist"]["value"],
                                            "extractor": metrics["fid_fmnist"]["extractor"]}
    assert gan["dataset_version"] == json.loads((store.gan / "summary.json").read_text())["dataset_version"]
    assert (gan["classes"], gan["steps"]) == (None, None)
    ddpm = listed[store.ddpm_name]
    assert (ddpm["family"], ddpm["classes"], ddpm["steps"], ddpm["gate"]) == ("ddpm", 10, 5, None)
    assert (listed[store.gpt_name]["kind"], listed[store.gpt_name]["block_size"]) == ("text", 32)
    assert httpx.get(f"{cli_server}/models/gan-s").json() == gan


def test_unknown_and_malformed_model_names(cli_server):
    missing = httpx.get(f"{cli_server}/models/nope")
    assert missing.status_code == 404 and "not served here" in missing.json()["detail"]
    assert httpx.get(f"{cli_server}/models/..%2F..%2Fetc").status_code in (404, 422)
    traversal = httpx.post(f"{cli_server}/generate", json={"model": "../gan-s"})
    assert traversal.status_code == 422 and traversal.json()["detail"][0]["loc"] == ["body", "model"]
    assert httpx.post(f"{cli_server}/generate", json={"model": "nope"}).status_code == 404


def test_a_png_grid_is_what_genscale_sample_writes(cli_server, store, tmp_path):
    response = httpx.post(f"{cli_server}/generate", json={"model": "gan-s", "n": 16, "seed": 3}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(cli, ["sample", str(store.gan), "-n", "16", "--seed", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(png_array(response.content), png_array(out.read_bytes()))


def test_base64_images_with_class_and_steps_are_the_samplers(cli_server, store):
    ddpm = local_sampler(store.ddpm)
    body = {"model": store.ddpm_name, "n": 2, "seed": 5, "steps": 10, "class": 3, "format": "base64"}
    response = httpx.post(f"{cli_server}/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    got = torch.stack([as_chw(png_array(base64.b64decode(b))) for b in response.json()["images"]])
    assert torch.equal(got, ddpm.images(2, seed=5, steps=10, label=3))
    assert not torch.equal(got, ddpm.images(2, seed=5, label=3))  # the default 5 steps give other images
    for bad, reason in (({"steps": 51}, "steps: 51 must be in [1, 50]"), ({"steps": 3}, "must divide"),
                        ({"class": 10}, "class: 10 is not a class"), ({"prompt": "x"}, "prompt: not an option")):
        r = httpx.post(f"{cli_server}/generate", json={**body, **bad}, timeout=60)
        assert r.status_code == 400 and reason in r.json()["detail"], (bad, r.text[:200])
    for bad, reason in (({"steps": 4}, "one pass"), ({"class": 1}, "unconditional")):
        r = httpx.post(f"{cli_server}/generate", json={"model": "gan-s", **bad})
        assert r.status_code == 400 and reason in r.json()["detail"], (bad, r.text)


def test_text_is_the_samplers_text(cli_server, store):
    gpt = local_sampler(store.gpt)
    body = {"model": store.gpt_name, "prompt": "The ", "n": 2, "seed": 7, "max_tokens": 20, "temperature": 0.9}
    response = httpx.post(f"{cli_server}/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["texts"] == gpt.texts(2, seed=7, prompt="The ", max_new_tokens=20, temperature=0.9,
                                                 top_k=None, top_p=None)
    streamed = httpx.post(f"{cli_server}/generate", json={**body, "stream": True}, timeout=60)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    got = events(streamed)
    assert got[-1] == {"done": True}
    assert ["".join(e["text"] for e in got[:-1] if e["row"] == row) for row in (0, 1)] == response.json()["texts"]
    r = httpx.post(f"{cli_server}/generate", json={**body, "prompt": "\u00e9"})
    assert r.status_code == 400 and "outside the run's vocabulary" in r.json()["detail"]


def test_concurrent_requests_each_get_their_own_seeds_images(cli_server, store):
    gan = local_sampler(store.gan)
    seeds = list(range(10, 18))
    results: dict[int, httpx.Response] = {}

    def ask(seed):
        results[seed] = httpx.post(f"{cli_server}/generate", json={"model": "gan-s", "n": 2, "seed": seed,
                                                                   "format": "base64"}, timeout=60)

    threads = [threading.Thread(target=ask, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in seeds:
        got = torch.stack([as_chw(png_array(base64.b64decode(b))) for b in results[seed].json()["images"]])
        want = gan.images(2, seed=seed)
        assert (got.int() - want.int()).abs().max() <= 1  # a larger batch may round differently


def test_queued_requests_share_one_forward_and_each_gets_what_it_alone_gets(store):
    gan, gpt = ServedModel("g", {}, local_sampler(store.gan)), ServedModel("t", {}, local_sampler(store.gpt))
    batches: list[tuple[str, int]] = []
    worker = Worker(max_batch=16, on_batch=lambda name, rows: batches.append((name, rows)))
    image_jobs = [ImageJob(n, seed, None, None) for n, seed in ((3, 1), (5, 2), (2, 3), (7, 4))]
    text_jobs = [TextJob("The ", 2, 4, 12, 0.8, None, None), TextJob("A ", 1, 5, 8, 0.8, None, None),
                 TextJob("The ", 1, 6, 16, 0.8, None, None),  # two prompt lengths; three seeds; three lengths
                 TextJob("The ", 1, 7, 16, 0.5, None, None)]  # another temperature: another forward
    jobs = [(gan, image_jobs[0]), (gpt, text_jobs[0]), (gan, image_jobs[1]), (gpt, text_jobs[1]),
            (gan, image_jobs[2]), (gpt, text_jobs[2]), (gan, image_jobs[3]), (gpt, text_jobs[3])]
    futures = [worker.submit(model, job, seconds=60) for model, job in jobs]  # all queued before the worker starts
    worker.start()
    got = [f.result(timeout=60) for f in futures]
    worker.stop()
    # oldest first, each forward joined by the queued requests of its model and key that fit in 16 rows
    assert batches == [("g", 10), ("t", 4), ("g", 7), ("t", 1)]
    for out, (model, job) in zip(got, jobs, strict=True):
        if model is gan:
            assert (out.int() - gan.sampler.images(job.n, seed=job.seed).int()).abs().max() <= 1
        else:
            assert out == gpt.sampler.texts(job.n, seed=job.seed, prompt=job.prompt, max_new_tokens=job.max_tokens,
                                            temperature=job.temperature, top_k=None, top_p=None)


def test_a_stream_delivers_tokens_before_the_generation_ends(guarded, store):
    """The model is held after its first token until the test has read that token from the socket."""
    model = guarded.models[store.gpt_name].sampler.model
    release, original = threading.Event(), model.stream

    def held(*args, **kwargs):
        for i, step in enumerate(original(*args, **kwargs)):
            yield step
            if i == 0 and not release.wait(timeout=30):
                raise AssertionError("never released")

    model.stream = held
    try:
        body = {"model": store.gpt_name, "prompt": "The ", "max_tokens": 10, "temperature": 0, "stream": True}
        with guarded.client.stream("POST", "/generate", json=body, timeout=10) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert not release.is_set()  # read while the model waits after its first token
            release.set()
            rest = [line for line in lines if line.startswith("data: ")]
    finally:
        del model.stream
    assert json.loads(first[6:])["row"] == 0 and json.loads(rest[-1][6:]) == {"done": True}
    text = json.loads(first[6:])["text"] + "".join(json.loads(line[6:])["text"] for line in rest[:-1])
    assert text == guarded.models[store.gpt_name].sampler.texts(1, seed=0, prompt="The ", max_new_tokens=10,
                                                                 temperature=0, top_k=None, top_p=None)[0]


# --- the OpenAI client -----------------------------------------------------------------------------------------------

def test_the_openai_client_completes_and_streams(cli_server, store):
    client = openai.OpenAI(base_url=f"{cli_server}/v1", api_key="unused", max_retries=0)
    done = client.completions.create(model=store.gpt_name, prompt="The ", max_tokens=12, temperature=0, seed=1)
    want = local_sampler(store.gpt).texts(1, seed=1, prompt="The ", max_new_tokens=12, temperature=0, top_k=None,
                                          top_p=None)[0]
    assert (done.object, done.model, done.choices[0].text, done.choices[0].finish_reason) == (
        "text_completion", store.gpt_name, want, "length")
    assert done.usage.completion_tokens == 12 and done.usage.prompt_tokens == 4
    chunks = list(client.completions.create(model=store.gpt_name, prompt="The ", max_tokens=12, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="samples images"):
        client.completions.create(model="gan-s", prompt="x", max_tokens=2)


def test_the_openai_client_needs_the_token(guarded, store):
    wrong = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=store.gpt_name, prompt="The ", max_tokens=2)
    right = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=TOKEN, max_retries=0)
    assert right.completions.create(model=store.gpt_name, prompt="The ", max_tokens=2).choices[0].text
    with pytest.raises(openai.BadRequestError, match="over the limit of 24"):
        right.completions.create(model=store.gpt_name, prompt="The ", max_tokens=25)


# --- limits and auth -------------------------------------------------------------------------------------------------

def test_every_route_but_health_ready_page_and_docs_needs_the_token(guarded):
    for path in ("/health", "/ready", "/", "/docs", "/openapi.json"):
        assert httpx.get(f"{guarded.url}{path}").status_code == 200, path
    for path in ("/models", "/models/gan-s", "/metrics"):
        r = httpx.get(f"{guarded.url}{path}")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert httpx.get(f"{guarded.url}{path}", headers={"Authorization": "Bearer x"}).status_code == 401
    r = httpx.post(f"{guarded.url}/generate", json={"model": "gan-s"})
    assert r.status_code == 401 and "GENSCALE_TOKEN" in r.json()["detail"]
    assert guarded.client.get("/models/gan-s").status_code == 200


def test_limits_are_4xx_with_their_reason(guarded, store, monkeypatch):
    c = guarded.client
    cases = [({"model": "gan-s", "n": 5}, "over the limit of 4 images"),
             ({"model": store.gpt_name, "max_tokens": 25}, "over the limit of 24 (--max-tokens)"),
             ({"model": store.gpt_name, "n": 3}, "over the limit of 2 continuations"),
             ({"model": store.gpt_name, "temperature": 1e-9}, "temperature")]
    default = c.post("/generate", json={"model": store.gpt_name})  # 64 new tokens by default, or the limit if lower
    assert default.json()["texts"] == guarded.models[store.gpt_name].sampler.texts(
        1, seed=0, prompt="", max_new_tokens=24, temperature=1.0, top_k=None, top_p=None)
    for body, reason in cases:
        r = c.post("/generate", json=body)
        assert r.status_code == 400 and reason in r.json()["detail"], (body, r.text)
    big = c.post("/generate", json={"model": store.gpt_name, "prompt": "a" * 3000})
    assert big.status_code == 413 and "limit of 2048 bytes" in big.json()["detail"]
    assert c.post("/generate", json={"model": "gan-s", "n": 0}).status_code == 422
    assert c.post("/generate", json={"model": "gan-s", "colour": 1}).status_code == 422

    gan = guarded.models["gan-s"].sampler
    slow = gan.images_many

    def too_slow(*args, **kwargs):
        time.sleep(1.5)
        return slow(*args, **kwargs)

    monkeypatch.setattr(gan, "images_many", too_slow)
    r = c.post("/generate", json={"model": "gan-s"})
    assert r.status_code == 408 and "limit of 1 s" in r.json()["detail"]


def test_prometheus_counts_requests_and_batch_sizes(guarded):
    def samples():
        text = guarded.client.get("/metrics").text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    before = samples()
    for seed in range(3):
        assert guarded.client.post("/generate", json={"model": "gan-s", "n": 3, "seed": seed}).status_code == 200
    after = samples()
    ok = 'genscale_requests_total{route="/generate",status="200"}'
    assert after[ok] - before.get(ok, 0) == 3
    rows = 'genscale_batch_rows_sum{model="gan-s"}'
    assert after[rows] - before.get(rows, 0) == 9
    latency = 'genscale_request_seconds_count{route="/generate"}'
    assert after[latency] - before.get(latency, 0) == 3


def test_a_schema_driven_fuzz_run_finds_no_server_error(guarded, tmp_path):
    schema = guarded.client.get("/openapi.json").json()  # the served models' names are the schema's choices
    assert schema["components"]["schemas"]["GenerateRequest"]["properties"]["model"]["enum"] == sorted(guarded.models)
    st = Path(sys.executable).with_name("st")
    result = subprocess.run([str(st), "run", f"{guarded.url}/openapi.json", "--checks", "not_a_server_error",
                             "--max-examples", "15", "--seed", "7", "--header", f"Authorization: Bearer {TOKEN}",
                             "--request-timeout", "20", "--no-color"],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            cwd=tmp_path)  # its cache folder .schemathesis/ goes there
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    operations = sum(len(methods) for methods in schema["paths"].values())
    assert re.search(rf"Tested: {operations}\b", result.stdout), result.stdout
    assert "Missing test data" not in result.stdout, result.stdout  # every operation reached a model


# --- the CLI and the web page ----------------------------------------------------------------------------------------

def test_serve_names_an_unknown_model_in_one_error_line(store):
    result = CliRunner().invoke(cli, ["serve", "no-such-model", "--port", str(free_port())])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: model 'no-such-model': neither a registered model nor a run (genscale models list; genscale runs)"]


def test_serve_without_models_in_an_empty_store_says_so_before_it_starts(tmp_path, monkeypatch):
    env = {**os.environ, "GENSCALE_RUNS": str(tmp_path / "empty"), "CI": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([str(Path(sys.executable).with_name("genscale")), "serve", "--port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert (result.stdout + result.stderr).strip().splitlines()[-1] == (
        "error: serve: no registered models; register one (genscale models register RUN --name NAME) or name a run "
        "to serve (genscale serve RUN)")
    monkeypatch.setenv("GENSCALE_RUNS", str(tmp_path / "empty"))
    listed = CliRunner().invoke(cli, ["models", "list"])
    assert listed.exit_code == 0 and listed.output.startswith("no registered models in sqlite:///"), listed.output


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                    reason="Debian's chromium is not installed (make setup installs it as root)")
def test_the_web_page_generates_images_and_streams_text_in_chromium(cli_server, store, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM is not None, "CI needs Debian's chromium (make setup installs it)"
    shots = Path(os.environ.get("GENSCALE_TEST_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(cli_server + "/")
        page.locator("#model").select_option("gan-s")
        expect(page.locator("#verdict")).to_have_text("PASS")
        expect(page.locator("#metrics")).to_contain_text("fid_fmnist")
        page.fill("#n-images", "4")
        page.click("#generate")
        expect(page.locator("#images img")).to_have_count(4)
        expect(page.locator("#status")).to_contain_text("done in")
        assert page.locator("#images img").first.evaluate("img => img.naturalWidth") == 28  # decoded PNGs
        page.screenshot(path=str(shots / "serve-page-images.png"), full_page=True)
        page.locator("#model").select_option(store.gpt_name)
        page.fill("#prompt", "The ")
        page.fill("#max-tokens", "30")
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text("done in")
        text = page.locator("pre.sample").inner_text()
        page.screenshot(path=str(shots / "serve-page-text.png"), full_page=True)
        browser.close()
    want = local_sampler(store.gpt).texts(1, seed=0, prompt="The ", max_new_tokens=30, temperature=0.8, top_k=None,
                                          top_p=None)[0]
    assert text == "The " + want
    for name in ("serve-page-images.png", "serve-page-text.png"):
        shot = Image.open(shots / name)
        assert shot.format == "PNG" and shot.size[0] == 1200
