"""Type stubs of freshet's native module (the Rust half of the package)."""

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, List

import numpy as np
import numpy.typing as npt

DEFAULT_CANDIDATES: int

class Subscriber:
    """Follows one model's snapshot topic (read_committed) on a background
    thread and serves its newest version in process; scoring releases the GIL.

    ``kafka`` holds librdkafka settings (security and the like), as the
    ``[kafka]`` table of freshet.toml does; ``topic`` defaults to
    ``freshet.snapshots.<model>``.
    """

    def __init__(
        self,
        bootstrap: str,
        model: str,
        kafka: Optional[Mapping[str, str]] = None,
        topic: Optional[str] = None,
        top_k_candidates: int = ...,
    ) -> None: ...
    @property
    def version(self) -> Optional[int]:
        """The version served now; None before the first full snapshot."""
    def info(self) -> Optional[Dict[str, Any]]:
        """The served version's description (``/version``'s ``info``)."""
    def stats(self) -> Dict[str, Any]:
        """The subscriber's counters (snapshots applied, skipped, rejected)."""
    def wait_for_version(self, version: int, timeout: float) -> int:
        """Waits until ``version`` (or newer) is served and returns the
        version served; raises TimeoutError after ``timeout`` seconds."""
    def score(
        self,
        user: str,
        item: str,
        features: Optional[Mapping[str, str]] = None,
        head: str = "rating",
        ts: Optional[int] = None,
    ) -> float:
        """The head's prediction (``/score``); ``ts`` is the request time in
        epoch ms (default now), which decides whether the user's session
        offset applies."""
    def rank(
        self,
        user: str,
        items: Sequence[str],
        features: Optional[Mapping[str, str]] = None,
        head: str = "rating",
        ts: Optional[int] = None,
    ) -> npt.NDArray[np.float32]:
        """One score per item, in order (``POST /rank``)."""
    def top_k(
        self,
        user: str,
        k: int,
        features: Optional[Mapping[str, str]] = None,
        exclude: Sequence[str] = (),
        head: str = "rating",
        ts: Optional[int] = None,
    ) -> List[Tuple[str, float]]:
        """The ``k`` best items, best first (``/recommend``)."""
    def close(self) -> None:
        """Stops following; scoring afterwards raises RuntimeError."""
    def __enter__(self) -> "Subscriber": ...
    def __exit__(self, *args: object) -> None: ...

def hash_id(id: str) -> int:
    """The 64-bit key of a user or item id (XXH3-64 with freshet's seed)."""

def hash_feature(name: str, value: str) -> int:
    """The 64-bit key of the context feature ``name=value``."""

def encode_json_event(
    json: bytes, format: str = "json", rating_min: Optional[float] = None, rating_max: Optional[float] = None
) -> Tuple[bytes, str]: ...
def rejection(
    payload: bytes,
    content_type: Optional[str] = None,
    rating_min: Optional[float] = None,
    rating_max: Optional[float] = None,
) -> Optional[Tuple[str, str]]: ...
