"""Keeping credentials out of everything written: the secret values of request headers
and their redaction from any text (errors, notes, probe findings) before it is stored,
printed or raised."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SECRET_HEADERS", "redact", "secret_values"]

SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"}
)


def secret_values(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The values to hide: each secret header's value and, for ``Bearer``/``Basic``/
    ``Token`` schemes, the credential alone; longest first, so a credential inside a
    full header value is not half-replaced."""
    found: set[str] = set()
    for key, value in headers.items():
        if key.lower() in SECRET_HEADERS and value:
            found.add(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                found.add(token)
    return tuple(sorted(found, key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text
