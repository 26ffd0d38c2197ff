"""The ``aml-assets`` command: explain reuse decisions, list and manage registered datasets."""

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


def _datastore(args: argparse.Namespace) -> Datastore:
    if args.root:
        return LocalDatastore(name="workspace", root=args.root)
    return workspace_datastore("workspace")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_explain(args: argparse.Namespace, out) -> int:
    ledger = StepLedger(_datastore(args), args.step)
    if args.list:
        for r in ledger.run_records():
            state = f"reused {r['reused_from_run']}" if r["reused"] else "ran"
            print(f"{r['run_id']}  {_when(r.get('created'))}  {r['fingerprint'][:12]}  {state}", file=out)
        return 0
    current, other, reasons = ledger.explain(args.run, args.against)
    head = f"Step '{args.step}', run {current['run_id']}"
    if current["reused"]:
        print(f"{head} reused outputs of run {current['reused_from_run']}.", file=out)
    else:
        print(f"{head} ran because: {'; '.join(current['reasons'])}.", file=out)
    if other is None:
        print("No earlier run to compare with.", file=out)
    elif not reasons:
        print(f"Same fingerprint as run {other['run_id']} ({current['fingerprint'][:12]}): nothing changed.", file=out)
    else:
        print(f"Compared with run {other['run_id']}, what changed:", file=out)
        for reason in reasons:
            print(f"  - {reason}", file=out)
    return 0


def cmd_datasets(args: argparse.Namespace, out) -> int:
    registry = DatasetRegistry(_datastore(args))
    if args.action == "list":
        names = registry.list_datasets()
        if not names:
            print("No registered datasets.", file=out)
        for name in names:
            versions = registry.versions(name)
            latest = registry.get(name)
            rows = (latest.record["ref"].get("producer") or {}).get("stats") or {}
            print(
                f"{name}  versions {versions[0]}..{versions[-1]}  latest v{latest.version}  "
                f"{rows.get('row_count', '-')} rows  {latest.uri}",
                file=out,
            )
    elif args.action == "show":
        ds = registry.get(args.name, args.version)
        print(json.dumps({k: v for k, v in ds.record.items()}, indent=1, default=str), file=out)
    elif args.action == "delete":
        registry.delete_version(args.name, args.version, force=args.force)
        print(f"Deleted dataset '{args.name}' version {args.version}.", file=out)
    return 0


def cmd_gc(args: argparse.Namespace, out) -> int:
    report = collect_garbage(_datastore(args), args.older_than_hours * 3600, dry_run=args.dry_run)
    verb = "Would remove" if args.dry_run else "Removed"
    for rel in report.removed:
        print(f"{verb} {rel}", file=out)
    print(
        f"{verb} {len(report.removed)} leftover(s); kept {report.kept_young} younger than "
        f"{args.older_than_hours:g} h.",
        file=out,
    )
    return 0


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
    gc.set_defaults(func=cmd_gc)
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
