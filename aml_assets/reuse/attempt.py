"""One attempt at a step's outputs: private scratch folders, then publish, then commit.

A script writes into scratch folders nobody else reads. Only when it succeeded is each output
hashed, described, published under a fresh path (a rename on a local disk; a new, never reused
prefix on blob storage) and made read-only; only then is the commit record created. A reader only
ever follows a commit, so a failed, killed or half-written attempt is never seen, let alone reused.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aml_assets.data import layout
from aml_assets.data.content import StatCache, data_manifest, manifest_digest
from aml_assets.data.datasets import OutputDataset, tabular_stats
from aml_assets.data.datastore import Datastore, make_writable
from aml_assets.errors import StepFailedError
from aml_assets.reuse.ledger import StepLedger
from aml_assets.reuse.records import Commit, PublishedOutput
from aml_assets.reuse.verify import file_records, with_stored_digests


class Attempt:
    """Scratch folders for a step's outputs, published and committed only on success."""

    def __init__(
        self,
        datastore: Datastore,
        ledger: StepLedger,
        run_id: str,
        fingerprint: str,
        outputs: Sequence[OutputDataset],
        cache: StatCache | None = None,
    ):
        self.datastore, self.ledger, self.fingerprint = datastore, ledger, fingerprint
        self.run_id, self.outputs, self.cache = run_id, list(outputs), cache
        self.name = f"{run_id[:8]}-{uuid.uuid4().hex[:8]}"
        self.scratch: Path | None = None
        self.out_dirs: dict[str, Path] = {}

    def __enter__(self) -> Attempt:
        self.scratch = self.datastore.scratch_dir(f"{self.ledger.step}-{self.name}")
        for out in self.outputs:
            self.out_dirs[out.name] = self.scratch / out.name
            self.out_dirs[out.name].mkdir(parents=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.scratch is not None and self.scratch.exists():
            make_writable(self.scratch)
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _describe(self, out: OutputDataset) -> PublishedOutput:
        local = self.out_dirs[out.name]
        entries = data_manifest(local, self.cache)
        if not entries:
            raise StepFailedError(
                f"Step '{self.ledger.step}' finished but wrote nothing to output '{out.name}' "
                f"({local}). Write the output into the folder passed as its argument."
            )
        stats = (
            tabular_stats(local, out.format, out.separator, out.name)
            if out.format in ("csv", "parquet")
            else None
        )
        return PublishedOutput(
            path=layout.output_path(self.ledger.step, self.fingerprint, self.name, out.name),
            content_hash=manifest_digest(entries),
            file_count=len(entries),
            byte_count=sum(e.size for e in entries),
            stats=stats,
            files=file_records(entries),
        )

    def publish(self, components: dict[str, Any], metrics: dict[str, Any]) -> Commit:
        """Hash, describe and publish every output, then commit them as one reusable result."""
        described = {out.name: self._describe(out) for out in self.outputs}
        published = {}
        for out in self.outputs:
            record = described[out.name]
            self.datastore.publish_dir(self.out_dirs[out.name], record.path)
            files = with_stored_digests(self.datastore, record.path, record.files)
            published[out.name] = PublishedOutput(
                record.path, record.content_hash, record.file_count, record.byte_count,
                record.stats, files,
            )
        commit = Commit(
            fingerprint=self.fingerprint,
            run_id=self.run_id,
            outputs=published,
            components=components,
            created=time.time(),
            metrics=dict(metrics),
        )
        self.ledger.commit(commit, self.name)
        return commit
