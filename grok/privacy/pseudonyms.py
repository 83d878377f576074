"""Keyed pseudonyms and hashes: the one construction every part of the engine uses for identifiers.

Run as: python -c "from grok.privacy.pseudonyms import pseudonymise_patient_id; print(pseudonymise_patient_id('MRN1', 'k'))"

Patient ids, DICOM UIDs, source paths and deny-list entries are replaced by HMAC-SHA256 tokens keyed
with the archive's secret (``$GROK_PSEUDONYM_KEY``). The same secret gives the same tokens on every
rebuild, so tables join across builds; without the secret a token cannot be reversed by trying
record numbers. Ingestion (:mod:`grok.ingest.deid`), cohort labelling (:mod:`grok.knowledge.labeller`)
and the deny lists and scans (:mod:`grok.privacy`) build on these functions, so they sit here, below
all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import os

#: Used when no secret is configured. Pseudonyms made with it are reproducible by anyone who has
#: this source code, so builds refuse it unless asked (``--demo-key``) and demos only rely on it.
DEMO_KEY = "grok-demo-key-not-secret"
KEY_ENV = "GROK_PSEUDONYM_KEY"


def resolve_key(key: str | bytes | None) -> tuple[str | bytes, bool]:
    """``(secret, demo_key_used)``: ``key``, else ``$GROK_PSEUDONYM_KEY``, else the public demo key."""
    if key:
        return key, False
    env = os.environ.get(KEY_ENV)
    return (env, False) if env else (DEMO_KEY, True)


def _key_bytes(key: str | bytes | None) -> bytes:
    k, _ = resolve_key(key)
    return k.encode() if isinstance(k, str) else k


def mac(key: str | bytes | None, *parts: str) -> bytes:
    """HMAC-SHA256 of ``parts`` (joined by a unit separator) under ``key`` (see :func:`resolve_key`)."""
    return hmac.new(_key_bytes(key), "\x1f".join(parts).encode("utf-8"), hashlib.sha256).digest()


def pseudonymise_patient_id(original: str, key: str | bytes | None = None) -> str:
    """Keyed pseudonym of a patient id: ``"P"`` + 16 hex digits of HMAC-SHA256(key, normalised id).

    The id is normalised (stripped, upper-cased) so "mrn123 " and "MRN123" are the same patient.
    ``key=None`` uses ``$GROK_PSEUDONYM_KEY``, else the demo key.
    """
    return "P" + mac(key, "patient", str(original).strip().upper()).hex()[:16]


def keyed_hash(value: str, key: str | bytes | None, *, purpose: str, length: int = 16) -> str:
    """A keyed, non-reversible token for ``value`` (e.g. a source path) for the given purpose."""
    return mac(key, purpose, value).hex()[:length]


def keyed_uid(uid: str, key: str | bytes | None) -> str:
    """Replace a DICOM instance UID by a keyed one under the 2.25 root (consistent within a key)."""
    return "2.25." + str(int.from_bytes(mac(key, "uid", uid)[:16], "big"))
