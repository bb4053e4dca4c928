"""Latency and throughput of `genscale serve`, against calling the same samplers directly in one process.

    python benchmarks/serve_latency.py [--clients 1 8] [--requests 6 16] [--workloads gan ddim text]

Models (trained 1 step each in a temporary store: speed does not depend on the weights; eval off):
  gan   dcgan-fmnist (DCGAN small), requests of 16 images
  ddim  ddpm-fmnist (UNet small, 1000 timesteps, class-conditional), 16 images with DDIM-50
  text  gpt-char-shakespeare with model.block_size=256 (GPT mini), 200-token continuations of a
        16-character prompt, temperature 0.8
The server is `genscale serve RUN RUN RUN` in a subprocess on 127.0.0.1 (its defaults: one worker thread, batches of
up to 16 rows from what is queued); clients are threads of this process, each sending its requests one after another
(httpx, keep-alive).
With C clients and R requests in all, each client sends R / C. Latency is per request (text: to the last token;
streamed: time to the first token too), throughput is requests / wall time of the whole set. The round-trip floor:
the median of 50 GET /health (HTTP, the middleware, no model).

Baseline, measured in the same run: the same requests as direct calls of the sampler in this process, one after
another (`images(16, seed=s)`, `texts(1, ..., max_new_tokens=200)`), while the server idles. The ratio is served
throughput / direct throughput: below 1 is the cost of HTTP, PNG encoding and the worker; above 1 with several
clients is what batching concurrent requests into one forward buys.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from _machine import command, machine, write_result

GENSCALE = Path(sys.executable).with_name("genscale")
PROMPT = "ROMEO:\nBut soft, "  # 16 characters
WORKLOADS = {
    "gan": ("dcgan-fmnist", []),
    "ddim": ("ddpm-fmnist", ["eval.sampling_steps=50"]),
    "text": ("gpt-char-shakespeare", ["model.block_size=256"]),
}


def train_runs(store: Path, names: list[str]) -> dict[str, Path]:
    runs = {}
    for name in names:
        config, extra = WORKLOADS[name]
        before = set((store / "runs").glob("*")) if (store / "runs").exists() else set()
        subprocess.run([str(GENSCALE), "train", config, "--set", "train.steps=1", "--set",
                        "eval.on_train_end=false", *sum((["--set", s] for s in extra), [])],
                       check=True, env=env_for(store), stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        (run,) = [p for p in (store / "runs").glob("*") if p.is_dir() and p not in before and p.name != "mlartifacts"]
        runs[name] = run
    return runs


def env_for(store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GENSCALE_TOKEN", "MLFLOW_TRACKING_URI")}
    return {**env, "GENSCALE_RUNS": str(store / "runs"), "GENSCALE_DATA": str(store / "datasets")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(name: str, model: str, seed: int, stream: bool = False) -> dict:
    if name == "text":
        return {"model": model, "prompt": PROMPT, "max_tokens": 200, "temperature": 0.8, "seed": seed,
                "stream": stream}
    return {"model": model, "n": 16, "seed": seed}


def ask(client: httpx.Client, name: str, model: str, seed: int, stream: bool = False) -> tuple[float, float | None]:
    """(seconds to the whole response, seconds to the first streamed token or None)."""
    start = time.perf_counter()
    if not stream:
        r = client.post("/generate", json=body(name, model, seed))
        r.raise_for_status()
        return time.perf_counter() - start, None
    first = None
    with client.stream("POST", "/generate", json=body(name, model, seed, stream=True)) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first is None and line.startswith("data: {\"row\""):
                first = time.perf_counter() - start
    return time.perf_counter() - start, first


def served(url: str, name: str, model: str, clients: int, requests: int, stream: bool = False) -> dict:
    per_client = requests // clients
    latencies: list[float] = []
    firsts: list[float] = []
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            for i in range(per_client):
                total, first = ask(client, name, model, seed=1000 * c + i, stream=stream)
                with lock:
                    latencies.append(total)
                    if first is not None:
                        firsts.append(first)

    with httpx.Client(base_url=url, timeout=600) as client:  # warm-up: one request
        ask(client, name, model, seed=999_999, stream=stream)
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    out = {"requests": len(latencies), "wall_s": round(wall, 3), "throughput_rps": round(len(latencies) / wall, 4),
           **percentiles(latencies)}
    if firsts:
        out["first_token"] = percentiles(firsts)
    return out


def percentiles(xs: list[float]) -> dict:
    qs = statistics.quantiles(xs, n=20, method="inclusive") if len(xs) > 1 else [xs[0]] * 19
    return {"p50_s": round(statistics.median(xs), 4), "p95_s": round(qs[18], 4),
            "latencies_s": [round(x, 4) for x in xs]}


def direct(sampler, name: str, requests: int) -> dict:
    """The same requests as sequential sampler calls in this process."""
    def call(seed: int) -> None:
        if name == "text":
            sampler.texts(1, seed=seed, prompt=PROMPT, max_new_tokens=200, temperature=0.8, top_k=None, top_p=None)
        else:
            sampler.images(16, seed=seed)

    call(999_999)  # warm-up
    latencies = []
    start = time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    return {"requests": requests, "wall_s": round(wall, 3), "throughput_rps": round(requests / wall, 4),
            **percentiles(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--requests", nargs="+", type=int, default=[6, 16], help="requests in all, per --clients value")
    ap.add_argument("--ddim-requests", nargs="+", type=int, default=[3, 8],
                    help="the same for ddim (a 16-image DDIM-50 request takes seconds)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_latency.json"))
    args = ap.parse_args()

    from genscale.pipeline import load_run, load_sampler, tracked_run_id

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        runs = train_runs(store, args.workloads)
        os.environ.update({"GENSCALE_RUNS": str(store / "runs"), "GENSCALE_DATA": str(store / "datasets")})
        names = {name: tracked_run_id(run) for name, run in runs.items()}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([str(GENSCALE), "serve", *map(str, runs.values()), "--port", str(port),
                                   "--max-tokens", "256", "--request-seconds", "600"], env=env_for(store),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.5)
            with httpx.Client(base_url=url, timeout=60) as client:  # the HTTP round trip itself: GET /health
                floor = []
                for _ in range(51):
                    start = time.perf_counter()
                    client.get("/health").raise_for_status()
                    floor.append(time.perf_counter() - start)
            floor_p50 = round(statistics.median(floor[1:]), 5)
            print(f"GET /health p50 {floor_p50 * 1000:.2f} ms (the round-trip floor)", flush=True)
            cells = []
            for name in args.workloads:
                run_dir, cfg = load_run(str(runs[name]))
                sampler = load_sampler(run_dir, cfg, torch.device("cpu"))[0]
                counts = args.ddim_requests if name == "ddim" else args.requests
                for clients, requests in zip(args.clients, counts, strict=True):
                    base = direct(sampler, name, requests)
                    http = served(url, name, names[name], clients, requests)
                    cell = {"workload": name, "clients": clients, "direct": base, "served": http,
                            "ratio_served_over_direct": round(http["throughput_rps"] / base["throughput_rps"], 3)}
                    if name == "text" and clients == 1:
                        cell["served_streamed"] = served(url, name, names[name], clients, requests, stream=True)
                    cells.append(cell)
                    print(f"{name:5} clients {clients}: served p50 {http['p50_s']:.3f} s p95 {http['p95_s']:.3f} s "
                          f"{http['throughput_rps']:.3f} req/s; direct {base['throughput_rps']:.3f} req/s; ratio "
                          f"{cell['ratio_served_over_direct']:.3f}", flush=True)
                del sampler
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {"command": command(), "machine": machine(),
              "settings": {"images_per_request": 16, "ddim_steps": 50, "text_new_tokens": 200, "prompt": PROMPT,
                           "server": "genscale serve defaults (one worker thread, max_batch 16, no batch wait)",
                           "dtype": "float32"},
              "health_p50_s": floor_p50, "cells": cells}
    write_result(args.out, result)
    print("\n| workload | clients | served p50 s | served p95 s | served req/s | direct req/s | ratio |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for c in cells:
        s, d = c["served"], c["direct"]
        print(f"| {c['workload']} | {c['clients']} | {s['p50_s']:.3f} | {s['p95_s']:.3f} | {s['throughput_rps']:.3f} "
              f"| {d['throughput_rps']:.3f} | {c['ratio_served_over_direct']:.3f} |")
    for c in cells:
        if "served_streamed" in c:
            f = c["served_streamed"]["first_token"]
            print(f"text streamed, 1 client: first token p50 {f['p50_s']:.4f} s, p95 {f['p95_s']:.4f} s")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
