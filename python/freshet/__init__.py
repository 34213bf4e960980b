"""freshet for Python.

Follow a model's snapshot chain and serve it in process, with the trainer's
own scoring function (the same scores as ``freshet serve`` at the same
version, bit for bit)::

    import freshet

    with freshet.Subscriber("127.0.0.1:9092", "demo") as model:
        model.wait_for_version(1, timeout=30)
        scores = model.rank("u1", ["i1", "i2", "i3"], features={"device": "ios"})

and check events before producing them::

    payload, content_type = freshet.encode_event(
        {"type": "rating", "user": "u1", "item": "i9", "rating": 4.5, "ts": 1764400000000})
    assert freshet.validate(payload, content_type) is None

Errors are Python exceptions carrying freshet's own message.
"""

from __future__ import annotations

import json as _json
from typing import Any, Mapping, Optional, Tuple

from ._native import DEFAULT_CANDIDATES, Subscriber, hash_feature, hash_id
from . import _native

__all__ = [
    "DEFAULT_CANDIDATES",
    "Subscriber",
    "encode_event",
    "hash_feature",
    "hash_id",
    "rejection",
    "validate",
    "CONTENT_TYPE_HEADER",
]

#: The Kafka header that names a payload's format.
CONTENT_TYPE_HEADER = "content-type"


def encode_event(
    event: Mapping[str, Any],
    format: str = "json",
    *,
    rating_min: Optional[float] = None,
    rating_max: Optional[float] = None,
) -> Tuple[bytes, str]:
    """Validate ``event`` (the JSON schema of docs/events.md, as a mapping)
    and encode it as ``"json"`` or ``"bincode"``.

    Returns the payload and the value for its ``content-type`` header.
    Raises ValueError naming the rejection reason when the event is invalid.
    """
    text = _json.dumps(dict(event), separators=(",", ":"), allow_nan=False)
    return _native.encode_json_event(text.encode("utf-8"), format, rating_min, rating_max)


def rejection(
    payload: bytes,
    content_type: Optional[str] = None,
    *,
    rating_min: Optional[float] = None,
    rating_max: Optional[float] = None,
) -> Optional[Tuple[str, str]]:
    """Why a freshet consumer would reject ``payload``: ``(reason, message)``,
    the reason being the dead-letter topic's ``reason`` header; None when it
    is a valid event. ``content_type`` is the header's value (None: JSON)."""
    return _native.rejection(bytes(payload), content_type, rating_min, rating_max)


def validate(
    payload: bytes,
    content_type: Optional[str] = None,
    *,
    rating_min: Optional[float] = None,
    rating_max: Optional[float] = None,
) -> Optional[str]:
    """The reason code a freshet consumer gives ``payload`` when it rejects
    it (the DLQ's ``reason`` header), or None for a valid event."""
    rejected = rejection(payload, content_type, rating_min=rating_min, rating_max=rating_max)
    return None if rejected is None else rejected[0]
