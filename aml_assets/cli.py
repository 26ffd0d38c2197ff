"""The ``aml-assets`` command: explain reuse decisions, manage registered datasets, verify stored
data, collect garbage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from aml_assets.data.datastore import Datastore, LocalDatastore
from aml_assets.data.registry import DatasetRegistry
from aml_assets.data.workspace import workspace_datastore
from aml_assets.errors import AmlAssetsError
from aml_assets.reuse.gc import collect_garbage
from aml_assets.reuse.ledger import StepLedger
from aml_assets.reuse.verify import verify_store


def _datastore(args: argparse.Namespace) -> Datastore:
    if args.root:
        return LocalDatastore(name="workspace", root=args.root)
    return workspace_datastore("workspace")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_explain(args: argparse.Namespace, out) -> int:
    store = _datastore(args)
    print(f"Datastore '{store.name}': {store.uri()}", file=out)
    ledger = StepLedger(store, args.step)
    if args.list:
        records = ledger.run_records()
        if not records:
            raise AmlAssetsError(ledger._no_runs_message())
        for r in records:
            print(f"{r.run_id}  {_when(r.created)}  {r.fingerprint[:12]}  {_state(r)}", file=out)
        return 0
    current, other, reasons = ledger.explain(args.run, args.against)
    head = f"Step '{args.step}', run {current.run_id}"
    if current.reused:
        print(f"{head} reused outputs of run {current.reused_from_run}.", file=out)
    elif current.status == "failed":
        print(f"{head} tried to run because: {'; '.join(current.reasons)}; it failed: {current.error}", file=out)
    elif current.status == "started":
        print(
            f"{head} started because: {'; '.join(current.reasons)}; it never finished (still "
            "running, or its process was killed).",
            file=out,
        )
    else:
        print(f"{head} ran because: {'; '.join(current.reasons)}.", file=out)
    for note in current.notes:
        print(f"Note: {note}", file=out)
    if other is None:
        print("No earlier run to compare with.", file=out)
    elif not reasons:
        print(
            f"Same fingerprint as run {other.run_id} ({_state(other)}; {current.fingerprint[:12]}): "
            "nothing changed.",
            file=out,
        )
    else:
        print(f"Compared with run {other.run_id} ({_state(other)}), what changed:", file=out)
        for reason in reasons:
            print(f"  - {reason}", file=out)
    return 0


def _state(record) -> str:
    if record.status == "reused":
        return f"reused {record.reused_from_run}"
    if record.status == "started":
        return "started, never finished"
    return record.status


def _ranges(numbers: Sequence[int]) -> str:
    """1, 2, 3, 5 -> '1..3, 5'."""
    parts: list[str] = []
    start = prev = None
    for n in [*numbers, None]:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}..{prev}")
        start = prev = n
    return ", ".join(parts)


def _warn_malformed(registry: DatasetRegistry) -> None:
    for record in registry.malformed:
        print(
            f"warning: skipped {record}; delete that version with 'aml-assets datasets delete "
            "<name> <version> --force' if it cannot be repaired",
            file=sys.stderr,
        )


def cmd_datasets(args: argparse.Namespace, out) -> int:
    registry = DatasetRegistry(_datastore(args))
    try:
        if args.action == "list":
            names = registry.list_datasets()
            if not names:
                print("No registered datasets.", file=out)
            for name in names:
                versions = registry.versions(name)
                latest = registry.get(name)
                rows = (latest.record["ref"].get("producer") or {}).get("stats") or {}
                print(
                    f"{name}  versions {_ranges(versions)}  latest v{latest.version}  "
                    f"{rows.get('row_count', '-')} rows  {latest.uri}",
                    file=out,
                )
        elif args.action == "show":
            ds = registry.get(args.name, args.version)
            print(json.dumps({k: v for k, v in ds.record.items()}, indent=1, default=str), file=out)
        elif args.action == "delete":
            registry.delete_version(args.name, args.version, force=args.force)
            print(
                f"Deleted dataset '{args.name}' version {args.version}; the number "
                f"{args.version} is never given out again.",
                file=out,
            )
    finally:
        _warn_malformed(registry)
    return 0


def cmd_gc(args: argparse.Namespace, out) -> int:
    if args.keep_runs is not None and args.keep_runs < 1:
        raise AmlAssetsError("--keep-runs must be at least 1: the newest run record is always kept.")
    report = collect_garbage(
        _datastore(args), args.older_than_hours * 3600, dry_run=args.dry_run, keep_runs=args.keep_runs
    )
    verb = "Would remove" if args.dry_run else "Removed"
    for path in [*report.removed, *report.removed_local]:
        print(f"{verb} {path} ({report.kinds.get(path, 'unused item')})", file=out)
    young = f"kept {report.kept_young + report.kept_young_local} younger than {args.older_than_hours:g} h"
    if report.count():
        print(f"{verb} {report.summary()}; {young}.", file=out)
    else:
        print(f"Nothing to remove; {young}.", file=out)
    for note in report.skipped:
        print(f"Skipped {note}.", file=out)
    if args.keep_runs is not None:
        pruned = "Would prune" if args.dry_run else "Pruned"
        print(
            f"{pruned} {len(report.pruned_runs)} old run record(s), keeping the newest "
            f"{args.keep_runs} of each step.",
            file=out,
        )
    return 0


def cmd_verify(args: argparse.Namespace, out) -> int:
    store = _datastore(args)
    print(f"Datastore '{store.name}': {store.uri()}", file=out)
    report = verify_store(store, dataset=args.dataset)
    for problem in report.problems:
        label = "MISSING" if problem.missing else "CORRUPT"
        print(f"{label} {store.uri(problem.path)}", file=out)
        for why in problem.why:
            print(f"  - {why}", file=out)
        if problem.used_by:
            print(f"  used by: {'; '.join(problem.used_by)}", file=out)
    for record in report.unreadable:
        print(f"UNREADABLE {record}", file=out)
    print(report.summary(), file=out)
    if not report.ok:
        print(
            "Corrupt or missing data is never reused or registered again: the next run recomputes "
            "the affected steps (or run them with regenerate_outputs=True).",
            file=out,
        )
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="aml-assets", description=__doc__)
    parser.add_argument(
        "--root",
        help="a local datastore folder; default: the workspace datastore ($AML_DATASTORE=azure "
        "for Azure Blob, else $AML_DATASTORE_ROOT or the platform's data folder)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("explain", help="why a step did or did not reuse its outputs")
    ex.add_argument("step")
    ex.add_argument("--run", help="run id (or prefix) to explain; default: the latest")
    ex.add_argument("--against", help="run id (or prefix) to compare with; default: the run before")
    ex.add_argument("--list", action="store_true", help="list the step's recorded runs")
    ex.set_defaults(func=cmd_explain)

    ds = sub.add_parser("datasets", help="registered datasets")
    ds_sub = ds.add_subparsers(dest="action", required=True)
    ds_sub.add_parser("list", help="every registered dataset with its versions")
    show = ds_sub.add_parser("show", help="one version's record (latest by default)")
    show.add_argument("name")
    show.add_argument("--version", type=int)
    delete = ds_sub.add_parser("delete", help="delete a version (refused without --force)")
    delete.add_argument("name")
    delete.add_argument("version", type=int)
    delete.add_argument("--force", action="store_true")
    ds.set_defaults(func=cmd_datasets)

    gc = sub.add_parser("gc", help="remove what killed or crashed steps left behind")
    gc.add_argument("--older-than-hours", type=float, default=24.0, help="grace period (default 24)")
    gc.add_argument("--dry-run", action="store_true", help="list, do not delete")
    gc.add_argument(
        "--keep-runs",
        type=int,
        metavar="N",
        help="also prune each step's run records to the newest N (default: keep all)",
    )
    gc.set_defaults(func=cmd_gc)

    ve = sub.add_parser(
        "verify",
        help="re-check every committed step output and registered version against its record",
    )
    ve.add_argument("--dataset", metavar="NAME", help="check only this dataset's registered versions")
    ve.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None, out=None) -> int:
    """Entry point of ``aml-assets``."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, out)
    except AmlAssetsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
