"""Domain errors. Each carries the HTTP status and JSON body it is rendered as.

The HTTP layer renders every ``JobsIndexError`` with one middleware; the CLI prints
``str(error)`` and exits non-zero. Storage code turns driver errors into these
(``raise StorageError(...) from exc``) so callers never see a driver exception.
"""

from __future__ import annotations


class JobsIndexError(Exception):
    """Base class: an error with a status and a JSON body."""

    status = 500
    headers: dict[str, str] = {}  # extra response headers (``Unauthorized``'s challenge)

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict:
        return {"error": self.message, **self.extra}


class BadRequest(JobsIndexError):
    """A query parameter failed validation (ComfyUI's exact 400 bodies)."""

    status = 400


class Unauthorized(JobsIndexError):
    """A request to a server that requires a token (``serve --host`` beyond loopback)
    carried none, or a wrong one. Rendered with ``headers`` (RFC 6750's challenge)."""

    status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="jobs-index"'}

    def __init__(self, message: str = "Unauthorized: a token is required (Authorization: Bearer <token>)") -> None:
        super().__init__(message)


class InvalidCursor(BadRequest):
    """The ``after`` cursor is malformed or does not match the request."""

    def __init__(self, reason: str = "") -> None:
        super().__init__("Invalid pagination cursor", code="INVALID_CURSOR")
        self.reason = reason


class JobNotFound(JobsIndexError):
    status = 404

    def __init__(self, job_id: str = "") -> None:
        super().__init__("Job not found")
        self.job_id = job_id


class InvalidItem(JobsIndexError):
    """A ComfyUI history/queue item that cannot be normalised (wrong shape or types)."""

    status = 400

    def __init__(self, job_id: object, reason: str) -> None:
        super().__init__(f"{job_id!s}: {reason}")
        self.job_id = job_id
        self.reason = reason


class InvalidDump(JobsIndexError):
    """An input file that is not a ComfyUI /history, /queue or JSONL export."""

    status = 400


class StorageError(JobsIndexError):
    """The database refused or failed an operation."""

    status = 503


class ReadOnlyDatabase(StorageError):
    """The database refused a write because it is read-only for us: a PostgreSQL hot
    standby (a read replica), ``default_transaction_read_only``, a role without write
    privileges, or a SQLite file we may not write. Nothing was written; a reader
    (``serve``, ``search``, ``sql``, ``export``) works there, a writer must go to the
    primary."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the database refuses writes ({reason}): it is read-only for this connection "
            "(a read replica, a read-only role or file); run import, follow, migrate, prune, "
            "compact and check --repair against the primary, as a role that may write"
        )


class ForeignKeyViolation(StorageError):
    """A migration left rows whose parent is gone (``PRAGMA foreign_key_check``
    before the commit); the whole migration was rolled back."""


class SchemaVersionError(StorageError):
    """The database's schema revision is not one this jobs-index may use as it is.

    Nothing was written (no backup, no lock taken for long); retrying cannot help
    until an operator acts, so a retry loop may stop on it (the custom node)."""


class DatabaseTooNew(SchemaVersionError):
    """The database was upgraded by a newer jobs-index (a downgrade, or a fleet
    half upgraded): this version does not know its schema revision."""


class UpgradeRequired(SchemaVersionError):
    """A shared (PostgreSQL) database is at an older revision: it is upgraded only
    by ``jobs-index migrate`` or an explicit ``--auto-migrate``."""


class ConfigError(JobsIndexError):
    """A bad database URL or option."""

    status = 400


class LeaseLost(StorageError):
    """Another writer holds the lease of this source: a destructive write for it
    (reconcile, clear, delete) was refused, nothing was changed."""

    def __init__(self, source: str, holder: str | None) -> None:
        super().__init__(f"source {source!r} is held by {holder or 'nobody'}; not ours to change")
        self.source, self.holder = source, holder


class RawUnreadable(StorageError):
    """A job's stored ``raw`` cannot be decoded: its dictionary row is missing from
    ``raw_dictionaries`` (deleted by other SQL, or a partial copy of the database), or
    the bytes are damaged. The row itself is left as it is: it is the only record."""

    status = 500


class RawDictionaryMissing(RawUnreadable):
    """A ``raw`` compressed with a dictionary whose ``raw_dictionaries`` row is gone."""

    def __init__(self, dict_id: int, job_id: str | None = None) -> None:
        of = f" of job {job_id!r}" if job_id is not None else ""
        super().__init__(
            f"raw dictionary {dict_id}{of} is missing from raw_dictionaries: that job's raw item cannot be "
            "read (restore the raw_dictionaries row from a backup; never delete one that jobs.raw_dict_id names)",
            dict_id=dict_id,
        )
        self.dict_id, self.job_id = dict_id, job_id
