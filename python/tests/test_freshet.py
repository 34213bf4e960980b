"""The Python package against the real broker and the real binaries: the
id hash's documented vectors, events encoded and validated as freshet's
consumer does (the DLQ's reasons), and a Subscriber that serves the same
scores as ``freshet serve`` at the same version, bit for bit."""

from __future__ import annotations

import json
import random
import time
import urllib.parse

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

import freshet
from conftest import REPO, Trained, family, free_port, http_get, metrics, wait_until


def test_hash_vectors_match_the_documented_ones():
    vectors = (REPO / "docs" / "id-hash-vectors.txt").read_text(encoding="utf-8")
    checked = 0
    for line in vectors.splitlines():
        if not line or line.startswith("#"):
            continue
        digest, _, quoted = line.partition(" ")
        assert freshet.hash_id(json.loads(quoted)) == int(digest, 16), line
        checked += 1
    assert checked >= 5
    assert freshet.hash_feature("device", "ios") == freshet.hash_id("device=ios")


def test_encode_event_validates_and_both_formats_pass_validation():
    now = int(time.time() * 1000)
    event = {"type": "rating", "user": "u1", "item": "i9", "rating": 4.5, "ts": now, "features": {"device": "ios"}}
    for format, mime in [("json", "application/json"), ("bincode", "application/x-bincode")]:
        payload, content_type = freshet.encode_event(event, format)
        assert content_type == mime
        assert freshet.validate(payload, content_type) is None, format
    with pytest.raises(ValueError, match="rating_out_of_range"):
        freshet.encode_event({**event, "rating": 50.0})
    with pytest.raises(ValueError, match="format"):
        freshet.encode_event(event, "xml")
    reason, message = freshet.rejection(b'{"type": "rating", "user": "u1"', None)
    assert reason == "malformed_json" and "JSON" in message
    assert freshet.validate(b"\x00\x01", "application/x-bincode") == "malformed_bincode"
    assert freshet.validate(b"{}", "text/csv") == "unsupported_content_type"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bootstrap):
    model = Trained(tmp_path_factory.mktemp("trained"), bootstrap)
    produced = model.produce(4_000, invalid_rate=0.05)
    run = model.spawn("run", "--config", str(model.config))
    total = produced["valid"] + produced["invalid"]

    def done():
        values = metrics(model.metrics)
        seen = family(values, "freshet_events_applied") + family(values, "freshet_events_rejected_total")
        return seen == total and values.get("freshet_snapshot_version") == values.get("freshet_checkpoint_version")

    assert wait_until(done), f"freshet run did not train on all {total} messages"
    run.terminate()
    assert run.wait(timeout=60) == 0
    model.serve = f"127.0.0.1:{free_port()}"
    model.spawn("serve", "--listen", model.serve, "--config", str(model.config))
    assert wait_until(lambda: http_get(model.serve, "/readyz")[0] == 200), "freshet serve never became ready"
    model.produced = produced
    yield model
    model.stop_all()


def test_a_bad_event_is_rejected_with_the_reason_of_the_dlq(trained):
    consumer = Consumer({"bootstrap.servers": trained.bootstrap, "group.id": f"{trained.name}-dlq",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(trained.dlq, 0, 0)])
    dead = []
    deadline = time.monotonic() + 60
    while len(dead) < trained.produced["invalid"] and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            dead.append(message)
    consumer.close()
    assert len(dead) == trained.produced["invalid"]
    reasons = set()
    for message in dead:
        headers = {key: (value or b"").decode(errors="replace") for key, value in (message.headers() or [])}
        content_type = headers.get("content-type")
        reasons.add(headers["reason"])
        assert freshet.validate(message.value() or b"", content_type) == headers["reason"], headers
    assert len(reasons) >= 5, reasons


def served_json(address, path):
    status, body = http_get(address, path)
    assert status == 200, body
    return json.loads(body)


def test_the_subscriber_scores_as_freshet_serve_does_bit_for_bit(trained):
    version = served_json(trained.serve, "/version")["info"]["version"]
    with freshet.Subscriber(trained.bootstrap, trained.name) as model:
        assert model.wait_for_version(version, timeout=60) == version
        assert model.info()["version"] == version
        # The counters follow the swap by a moment.
        assert wait_until(lambda: model.stats()["fulls_applied"] >= 1, timeout=10)
        rng = random.Random(7)
        ts = int(time.time() * 1000)
        checked = 0
        for _ in range(300):
            user, item = f"u{rng.randrange(220)}", f"i{rng.randrange(170)}"
            head = rng.choice(["rating", "click"])
            features = rng.choice([None, {"device": "ios"}, {"device": "android"}, {"device": "never-seen"}])
            query = {"user": user, "item": item, "head": head, "ts": ts}
            query.update({f"f.{name}": value for name, value in (features or {}).items()})
            answer = served_json(trained.serve, "/score?" + urllib.parse.urlencode(query))
            assert answer["version"] == version
            mine = model.score(user, item, features=features, head=head, ts=ts)
            # Both are float32s: the HTTP answer prints the shortest decimal that round-trips.
            assert np.float32(answer["score"]) == np.float32(mine), (query, answer, mine)
            checked += 1
        assert checked == 300

        items = [f"i{n}" for n in range(40)] + ["never-seen"]
        scores = model.rank("u3", items, features={"device": "ios"}, head="click", ts=ts)
        assert scores.dtype == np.float32 and scores.shape == (len(items),)
        each = [model.score("u3", item, features={"device": "ios"}, head="click", ts=ts) for item in items]
        assert [np.float32(s) for s in scores] == [np.float32(s) for s in each]

        best = model.top_k("u3", 5, exclude=["i0"], head="rating", ts=ts)
        answer = served_json(trained.serve, f"/recommend?user=u3&k=5&exclude=i0&head=rating&ts={ts}")
        assert [(i["item"], np.float32(i["score"])) for i in answer["items"]] == [(i, np.float32(s)) for i, s in best]
        assert all(item != "i0" for item, _ in best)

        with pytest.raises(ValueError, match="head"):
            model.score("u1", "i1", head="views")
    with pytest.raises(RuntimeError, match="closed"):
        model.score("u1", "i1")


def test_waiting_for_a_version_that_never_comes_times_out(trained):
    with freshet.Subscriber(trained.bootstrap, trained.name) as model:
        with pytest.raises(TimeoutError, match="not served"):
            model.wait_for_version(10**9, timeout=1.0)
    with pytest.raises(ValueError, match="bootstrap"):
        freshet.Subscriber(trained.bootstrap, trained.name, kafka={"bootstrap.servers": "elsewhere:9092"})
