"""One exception family for aml-assets: every error names the object, the problem and the fix."""

from __future__ import annotations


class AmlAssetsError(Exception):
    """Base class of every error aml-assets raises on purpose."""


class DatastoreError(AmlAssetsError):
    """A datastore could not be reached, or a path on it is invalid or missing."""


class DatasetError(AmlAssetsError):
    """A dataset is missing, malformed, or a registered version cannot be read or written."""


class DatasetCheckFailedError(DatasetError):
    """A dataset failed a blocking check: it is not registered and downstream steps do not run."""


class PipelineValidationError(AmlAssetsError):
    """A pipeline definition is invalid; lists every problem found, not just the first."""

    def __init__(self, pipeline: str, problems: list[str]):
        self.pipeline = pipeline
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"Pipeline '{pipeline}' is invalid ({len(self.problems)} problem"
            f"{'s' if len(self.problems) != 1 else ''}):\n{lines}"
        )


class ComputeTargetError(AmlAssetsError):
    """A compute target (Spark pool, CPU cluster) cannot be reached or used."""


class StepFailedError(AmlAssetsError):
    """A step's script failed; carries the tail of its stderr."""


class LedgerRecordError(AmlAssetsError):
    """A record of the reuse ledger (a commit or a run record) cannot be read."""


class CorruptOutputError(AmlAssetsError):
    """Published data no longer matches the record made when it was published."""


class StepTimeoutError(StepFailedError):
    """A step ran longer than its timeout and was stopped; nothing was published."""


class StepInterruptedError(StepFailedError):
    """A step was stopped because its run was interrupted; nothing was published."""
