"""The ledger's records, typed: what a published output, a commit and a run record hold.

They are stored as JSON on the datastore. Reading one back goes through ``from_json``, which
names the record and what is wrong with it instead of failing later with a ``KeyError``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from aml_assets.errors import LedgerRecordError


@dataclass(frozen=True)
class FileRecord:
    """One file of a published output, as it was when published: the integrity record.

    ``raw`` is the BLAKE3 of the exact bytes; ``stored`` is what the store itself records
    for the object (``md5:...`` or ``etag:...`` on blob storage; empty on a local disk).
    """

    file: str
    size: int
    raw: str
    stored: str = ""


@dataclass(frozen=True)
class PublishedOutput:
    """One output of a committed attempt."""

    path: str
    content_hash: str
    file_count: int
    byte_count: int
    stats: dict[str, Any] | None = None
    files: tuple[FileRecord, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PublishedOutput:
        """Build from its JSON form."""
        files = tuple(FileRecord(**f) for f in data.get("files") or ())
        return cls(
            path=data["path"],
            content_hash=data["content_hash"],
            file_count=int(data["file_count"]),
            byte_count=int(data["byte_count"]),
            stats=data.get("stats"),
            files=files,
        )


@dataclass(frozen=True)
class Commit:
    """A published, reusable result of one fingerprint of a step."""

    fingerprint: str
    run_id: str
    outputs: dict[str, PublishedOutput]
    components: dict[str, Any]
    created: float
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Serialize for the commit record."""
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Commit:
        """Parse a commit record; a malformed one raises ``LedgerRecordError`` naming it."""
        try:
            data = json.loads(raw)
            return cls(
                fingerprint=data["fingerprint"],
                run_id=data["run_id"],
                outputs={k: PublishedOutput.from_dict(v) for k, v in data["outputs"].items()},
                components=data.get("components") or {},
                created=float(data.get("created") or 0),
                metrics=data.get("metrics") or {},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerRecordError(f"commit record {where} is malformed ({exc!r})") from exc


@dataclass
class CommitCandidate:
    """A commit record and what checking its outputs found (empty ``problems``: sound)."""

    name: str
    commit: Commit
    problems: list[str] = field(default_factory=list)
    missing: bool = False


#: How a run of a step ended. ``started`` stays only when the run's process died mid-step.
RUN_STATUSES = ("started", "ran", "reused", "failed")


@dataclass
class RunRecord:
    """What one run of a step decided, why, and how it ended (what ``explain`` reads)."""

    run_id: str
    step: str
    fingerprint: str
    components: dict[str, Any]
    status: str
    reasons: list[str] = field(default_factory=list)
    reused_from_run: str | None = None
    code_prefix: str = ""
    created: float = 0.0
    finished: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    #: The record this run's decision compared with (a file name under ``runs/``), so explaining
    #: the latest run reads two records, never the whole history.
    previous: str | None = None
    #: This record's own file name under ``runs/``.
    name: str = ""

    @property
    def reused(self) -> bool:
        """Whether the run reused a committed result."""
        return self.status == "reused"

    def to_json(self) -> bytes:
        """Serialize for the run record."""
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> RunRecord:
        """Parse a run record (also the format written before statuses existed)."""
        try:
            data = json.loads(raw)
            status = data.get("status") or ("reused" if data.get("reused") else "ran")
            return cls(
                run_id=data["run_id"],
                step=data.get("step", ""),
                fingerprint=data["fingerprint"],
                components=data.get("components") or {},
                status=status,
                reasons=list(data.get("reasons") or []),
                reused_from_run=data.get("reused_from_run"),
                code_prefix=data.get("code_prefix", ""),
                created=float(data.get("created") or 0),
                finished=data.get("finished"),
                error=data.get("error"),
                notes=list(data.get("notes") or []),
                previous=data.get("previous"),
                name=data.get("name") or where.rsplit("/", 1)[-1],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerRecordError(f"run record {where} is malformed ({exc!r})") from exc
