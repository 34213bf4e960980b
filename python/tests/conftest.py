"""Shared set-up of the Python package's tests: the real Kafka broker
(``deploy/kafka/kafka.sh start``; ``FRESHET_KAFKA_BOOTSTRAP``, default
127.0.0.1:9092) and the ``freshet`` binary (``FRESHET_BIN``, default the
debug build under ``CARGO_TARGET_DIR``)."""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Callable, Dict, Optional, Tuple

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
WAIT = 120.0
_counter = itertools.count()


def freshet_bin() -> str:
    explicit = os.environ.get("FRESHET_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    return str(pathlib.Path(target) / "debug" / "freshet")


def _die_with_parent() -> None:
    """In a child, before exec: SIGKILL it when the test process ends, even
    when it ends without running its fixtures' teardown (an abort)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def unique(prefix: str) -> str:
    return f"{prefix}-py-{os.getpid()}-{int(time.time() * 1000)}-{next(_counter)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def http_get(address: str, path: str) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def metrics(address: str) -> Dict[str, float]:
    status, text = http_get(address, "/metrics")
    if status != 200:
        return {}
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def family(values: Dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


@pytest.fixture(scope="session")
def bootstrap() -> str:
    address = os.environ.get("FRESHET_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    host, _, port = address.partition(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        pytest.fail(f"no Kafka broker at {address} ({error}): run deploy/kafka/kafka.sh start")
    return address


class Trained:
    """A model trained by ``freshet run`` on synthetic events (with
    malformed ones and context features), published, and served by
    ``freshet serve``."""

    def __init__(self, work: pathlib.Path, bootstrap: str):
        self.work = work
        self.bootstrap = bootstrap
        self.name = unique("model")
        self.clicks, self.ratings, self.dlq = unique("clicks"), unique("ratings"), unique("dlq")
        self.metrics = f"127.0.0.1:{free_port()}"
        self.serve: Optional[str] = None
        self.config = work / "freshet.toml"
        self.config.write_text(
            f"""
name = "{self.name}"
[kafka]
bootstrap = "{bootstrap}"
[consumer]
group_id = "{unique('g')}"
topics = ["{self.clicks}", "{self.ratings}"]
dlq_topic = "{self.dlq}"
[model]
dim = 8
[trainer]
min_count = 1
[checkpoint]
dir = "{work / 'checkpoint'}"
interval_ms = 200
[metrics]
listen = "{self.metrics}"
"""
        )
        self.processes = []

    def spawn(self, *args: str) -> subprocess.Popen:
        log = open(self.work / f"{unique('freshet')}.log", "wb")
        process = subprocess.Popen(
            [freshet_bin(), *args], stdout=subprocess.DEVNULL, stderr=log, preexec_fn=_die_with_parent
        )
        self.processes.append(process)
        return process

    def produce(self, count: int, invalid_rate: float) -> dict:
        output = subprocess.run(
            [freshet_bin(), "produce", "synth", "--bootstrap", self.bootstrap, "--events", str(count),
             "--invalid-rate", str(invalid_rate), "--users", "200", "--items", "150",
             "--clicks-topic", self.clicks, "--ratings-topic", self.ratings, "--partitions", "2"],
            check=True, capture_output=True, text=True,
        )
        return json.loads(output.stdout.strip().splitlines()[-1])

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
