"""API keys and job tokens: random secrets handed out once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> tuple[str, str, str]:
    """(plaintext key, its hash, a short prefix to recognise it by)."""
    key = "fw_" + secrets.token_urlsafe(32)
    return key, hash_secret(key), key[:10]


def new_job_token() -> tuple[str, str]:
    token = "fwj_" + secrets.token_urlsafe(32)
    return token, hash_secret(token)
