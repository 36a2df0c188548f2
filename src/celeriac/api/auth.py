"""Bearer tokens, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


class Tokens:
    """The accepted tokens, kept only as SHA-256 digests.

    Comparing digests of equal length with ``hmac.compare_digest``, against every token with no
    early exit, tells a caller nothing about how close a guess was or how long a token is.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(token) for token in tokens)
        if not self._digests:
            raise ValueError("at least one token is required")

    def __repr__(self) -> str:
        return f"Tokens(<{len(self._digests)} hidden>)"

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, candidate: str) -> bool:
        digest = _digest(candidate)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(known, digest)
        return matched


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
