"""Helpers shared by worker and agent tests: a tiny worker config and a real worker process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from tools.adl.pipeline import AdlSettings
from tools.adl.steering import SteeringSettings
from tools.corpus import CorpusSpec
from tools.errors import WorkerUnavailableError
from tools.models import ModelPairSpec
from tools.net import free_port
from tools.toolbox import AskSettings
from tools.worker.client import wait_for_worker
from tools.worker.schema import WorkerConfig, WorkerLimits

TINY_STEERING_PROMPTS = ["hello", "what is the sky"]
# ask_models on the tiny worker: its limit is 128 new tokens (the reference default is 1024).
TINY_ASK = AskSettings(max_new_tokens=8)


def tiny_corpus(folder: Path) -> CorpusSpec:
    words = ["the", "owl", "is", "a", "big", "bird", "and", "the", "sky", "is", "blue", "with",
             "the", "sun", "and", "rain", "on", "the", "city"]
    lines = [" ".join(words[i % 7 :] + words[: i % 7]) + " ." for i in range(60)]
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(lines))
    return CorpusSpec(source="text", path=str(path), mixing_fraction=0.2)


def tiny_worker_config(model_dir: Path, adapter_dir: Path, folder: Path) -> WorkerConfig:
    """A worker on the tiny test model: small ADL and steering settings, small limits."""
    return WorkerConfig(
        label="tiny",
        pair=ModelPairSpec(base=str(model_dir), finetuned=str(adapter_dir)),
        datasets=[tiny_corpus(folder)],
        adl=AdlSettings(layers=(2, 3), n_positions=3, n_samples=20, sample_unit="document",
                        readout_k=30, patchscope_k=10, patchscope_scales=(1.0, 4.0),
                        random_directions=16, primary_layer=3),
        steering=SteeringSettings(search_steps=2, samples_per_strength=2, search_max_new_tokens=6,
                                  final_max_new_tokens=6,
                                  final_samples=2),
        steering_prompts=TINY_STEERING_PROMPTS,
        steering_positions=[1, 2],
        limits=WorkerLimits(max_prompts=4, max_new_tokens=128, max_samples=3,
                            max_request_bytes=20_000),
    )


@contextmanager
def worker_process(config: WorkerConfig, folder: Path, adl_home: Path, *, host: str = "127.0.0.1",
                   token: str | None = None, timeout: float = 180.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start `adl worker serve --config` in a real process; yields (url, process)."""
    config_path = folder / f"worker-{os.getpid()}-{time.monotonic_ns()}.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = free_port()
    env = {**os.environ, "ADL_HOME": str(adl_home), "HF_HUB_OFFLINE": "1"}
    env.pop("ADL_WORKER_TOKEN", None)
    if token:
        env["ADL_WORKER_TOKEN"] = token
    log = (folder / f"worker-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "evals.cli", "worker", "serve", "--config", str(config_path),
         "--host", host, "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_worker(url, timeout, process)
        except WorkerUnavailableError as exc:
            raise RuntimeError(f"{exc}\n" + (folder / f"worker-{port}.log").read_text()[-3000:]) from exc
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


@contextmanager
def serve_in_thread(app: Any, what: str = "the server") -> Iterator[str]:
    """Serve an ASGI `app` with uvicorn in a thread on a free loopback port; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
