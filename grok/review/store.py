"""The review log in any SQLAlchemy database: append-only decision events and curators with hashed tokens.

SQLite by default (a file beside the dataset, write-ahead log, one transaction per decision, so a killed
server leaves either the whole decision or nothing); any SQLAlchemy URL for a team
(``postgresql+psycopg://user@host/db``). Needs the ``review`` extra: ``pip install -e '.[review]'``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

import pandas as pd

from grok.review.decisions import ReviewError, check_decision

try:  # the review extra; publication without --reviews must import without it
    import sqlalchemy as sa
except ImportError:  # pragma: no cover - exercised only without the extra
    sa = None

_INSTALL = "the review storage needs SQLAlchemy: pip install -e '.[review]'"

if sa is not None:
    metadata = sa.MetaData()
    curators = sa.Table(
        "review_curators", metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    events = sa.Table(
        "review_events", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("row_id", sa.String(128), nullable=False, index=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("curator", sa.String(64), nullable=False, index=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason_code", sa.String(32)),
        sa.Column("note", sa.Text),
        sa.Column("before", sa.Text),  #: the row's messages (JSON) when the decision was taken
        sa.Column("after", sa.Text),  #: edited messages (JSON), for edit and needs_review
        sa.Column("verdict", sa.Text),  #: the verifier's verdict on ``after`` (JSON)
        sa.Column("created_at", sa.String(32), nullable=False),
    )

#: Columns of an event as read back and exported.
EVENT_COLUMNS = ("id", "row_id", "content_hash", "source", "family", "curator", "action", "reason_code", "note",
                 "before", "after", "verdict", "created_at")
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def default_url(folder: str | Path) -> str:
    """``sqlite:///<folder>/reviews.sqlite``: the default database beside a dataset."""
    return f"sqlite:///{Path(folder).resolve() / 'reviews.sqlite'}"


def as_url(db: str | Path) -> str:
    """A SQLAlchemy URL for ``db``: a URL is kept, a file path becomes a SQLite URL."""
    s = str(db)
    return s if "://" in s else f"sqlite:///{Path(s).resolve()}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """The review log at ``url`` (tables created on first use)."""

    def __init__(self, url: str | Path):
        if sa is None:
            raise ImportError(_INSTALL)
        self.url = as_url(url)
        kw: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kw["connect_args"] = {"timeout": 30, "check_same_thread": False}
        try:
            self.engine = sa.create_engine(self.url, **kw)
        except (sa.exc.ArgumentError, ModuleNotFoundError) as exc:
            raise ReviewError(f"--db {self.url!r}: not a usable SQLAlchemy URL ({exc}); use a file path or e.g. "
                              "postgresql+psycopg://user@host/db") from exc
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            metadata.create_all(self.engine)
        except sa.exc.OperationalError as exc:
            raise ReviewError(f"review database {self.engine.url.render_as_string(hide_password=True)} cannot "
                              f"be opened ({exc.orig}); check the path or URL and that it is writable") from exc

    def close(self) -> None:
        self.engine.dispose()

    # -- curators ---------------------------------------------------------------------------------
    def add_curator(self, name: str) -> str:
        """Register ``name`` (or give it a new token) and return the token; only its sha256 is stored."""
        if not name or len(name) > 64 or not set(name) <= _NAME_OK:
            raise ReviewError(f"curator name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        token = secrets.token_urlsafe(24)
        row = {"name": name, "token_sha256": _token_hash(token), "created_at": _now()}
        with self.engine.begin() as c:
            c.execute(sa.delete(curators).where(curators.c.name == name))
            c.execute(sa.insert(curators).values(**row))
        return token

    def curator_for(self, token: str | None) -> str | None:
        """The curator whose token this is, or None."""
        if not token:
            return None
        h = _token_hash(token)
        with self.engine.connect() as c:
            row = c.execute(sa.select(curators.c.name, curators.c.token_sha256)
                            .where(curators.c.token_sha256 == h)).first()
        return row.name if row is not None and hmac.compare_digest(row.token_sha256, h) else None

    def curator_names(self) -> list[str]:
        with self.engine.connect() as c:
            return [r.name for r in c.execute(sa.select(curators.c.name).order_by(curators.c.name))]

    # -- events -----------------------------------------------------------------------------------
    def record(self, *, row_id: str, content_hash: str, source: str, family: str, curator: str, action: str,
               reason_code: str | None = None, note: str | None = None, before: Any = None, after: Any = None,
               verdict: Any = None) -> dict[str, Any]:
        """Append one decision in one transaction and return it (with its id and time)."""
        check_decision(action, reason_code)
        if not curator:
            raise ReviewError("a decision needs a curator name")
        row = {"row_id": row_id, "content_hash": content_hash, "source": source, "family": family,
               "curator": curator, "action": action, "reason_code": reason_code if action == "reject" else None,
               "note": note or None, "before": _json(before), "after": _json(after), "verdict": _json(verdict),
               "created_at": _now()}
        with self.engine.begin() as c:
            new_id = c.execute(sa.insert(events).values(**row).returning(events.c.id)).scalar_one()
        return {"id": new_id, **row}

    def events(self, after_id: int = 0, row_id: str | None = None) -> list[dict[str, Any]]:
        """Events with an id above ``after_id`` (oldest first), optionally of one row."""
        q = sa.select(*[events.c[k] for k in EVENT_COLUMNS]).where(events.c.id > after_id)
        if row_id is not None:
            q = q.where(events.c.row_id == row_id)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q.order_by(events.c.id))]

    def count(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())

    def export(self, path: str | Path) -> int:
        """Write every event to ``path`` as parquet; returns the number of events."""
        df = pd.DataFrame(self.events(), columns=list(EVENT_COLUMNS))
        df.to_parquet(path, index=False)
        return len(df)


def _json(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a killed process; atomic either way
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
