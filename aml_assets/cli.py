"""The ``aml-assets`` command: run pipelines (on a warm runner), show runs, explain reuse
decisions, manage registered datasets, verify stored data, collect garbage, keep Spark pools
warm."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from aml_assets.errors import AmlAssetsError

# Each command imports what it needs: `aml-assets run` on a warm runner must start in tens of
# milliseconds, and the datastore, registry and Spark modules import Dagster (~1 s).
if TYPE_CHECKING:
    from aml_assets.compute.spark import SparkPool
    from aml_assets.data.datastore import Datastore
    from aml_assets.data.registry import DatasetRegistry


def _datastore(args: argparse.Namespace) -> Datastore:
    from aml_assets.data.datastore import LocalDatastore
    from aml_assets.data.workspace import workspace_datastore

    if args.root:
        return LocalDatastore(name="workspace", root=args.root)
    return workspace_datastore("workspace")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_explain(args: argparse.Namespace, out) -> int:
    from aml_assets.reuse.ledger import StepLedger

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
    from aml_assets.data.registry import DatasetRegistry

    if args.action == "upload":
        return _upload(args, out)
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
            if args.json:
                print(json.dumps(ds.record, indent=1, default=str), file=out)
            else:
                _print_dataset(ds.record, out)
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


def _upload(args: argparse.Namespace, out) -> int:
    """Copy a local file, or a folder's files, onto the workspace datastore (``upload_files``)."""
    from aml_assets.data.datastore import check_relative_path

    store = _datastore(args)
    local = Path(args.local_path)
    folder = check_relative_path(store.name, args.to) if args.to else ""
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        if not files:
            raise AmlAssetsError(f"Folder '{local}' has no files to upload.")
        parents = [f.relative_to(local).parent.as_posix() for f in files]
        targets = [(f, "/".join(x for x in (folder, parent) if x not in ("", ".")))
                   for f, parent in zip(files, parents, strict=True)]
    elif local.is_file():
        targets = [(local, folder)]
    else:
        raise AmlAssetsError(f"Cannot upload '{local}': no such file or folder.")
    # Every refusal before the first byte is copied: a folder is uploaded whole or not at all.
    there = [f"{t}/{p.name}" if t else p.name for p, t in targets]
    there = [rel for rel in there if store.exists(rel)] if not args.overwrite else []
    if there:
        raise AmlAssetsError(
            f"Datastore '{store.name}' already has {', '.join(there[:3])}"
            f"{' and more' if len(there) > 3 else ''} ({store.uri()}); pass --overwrite to replace "
            "(steps reading a replaced file rerun: its content is part of their fingerprint)."
        )
    for path, target in targets:
        rel = f"{target}/{path.name}" if target else path.name
        if target:
            store.upload_files([path], target, overwrite=True)
        else:  # the datastore's root: upload_files wants a folder
            store.write_bytes(rel, path.read_bytes())
        print(f"Uploaded {path} to {store.uri(rel)}", file=out)
    print(f"{len(targets)} file(s) on datastore '{store.name}' ({store.uri()}).", file=out)
    return 0


def _print_dataset(record: dict, out) -> None:
    """One registered version, for a reader: what it is, where, from what, and a preview."""
    ref = record.get("ref") or {}
    producer = ref.get("producer") or {}
    stats = producer.get("stats") or {}
    lines = [
        f"{record.get('name')} version {record.get('version')}",
        f"  created      {_when(record.get('created'))}",
    ]
    if record.get("description"):
        lines.append(f"  description  {record['description']}")
    if record.get("tags"):
        lines.append("  tags         " + ", ".join(f"{k}={v}" for k, v in record["tags"].items()))
    lines += [
        f"  location     {ref.get('uri')}",
        f"  format       {ref.get('format')}, {ref.get('file_count')} file(s), {ref.get('byte_count')} bytes",
        f"  content      {ref.get('content_hash')}",
    ]
    if producer:
        lines.append(f"  produced by  step {producer.get('step')} in run {producer.get('run_id')}")
    for name, used in (ref.get("input_versions") or {}).items():
        version = f" version {used['version']}" if used.get("version") is not None else ""
        lines.append(f"  read         {name}{version} ({str(used.get('content_hash'))[:12]}) at {used.get('uri')}")
    if stats:
        lines.append(f"  rows         {stats.get('row_count')}")
        lines.append("  columns      " + ", ".join(f"{n} ({t})" for n, t in stats.get("columns", [])))
        if stats.get("preview"):
            lines += ["", stats["preview"]]
    print("\n".join(lines), file=out)


def _use_project_home(create: bool) -> None:
    """Without ``DAGSTER_HOME``, use ``./.dagster_home`` as the Makefile does: set up once from
    ``./dagster.yaml`` when ``create`` (a run), else it must exist (reading history)."""
    if os.environ.get("DAGSTER_HOME"):
        return
    home = Path(".dagster_home").absolute()
    if create:
        from aml_assets.service.instance import ensure_instance

        config = Path("dagster.yaml")
        ensure_instance(home, default_config=config if config.is_file() else None)
        print(f"DAGSTER_HOME is not set: run history goes to {home}", file=sys.stderr)
    elif not home.is_dir():
        raise AmlAssetsError(
            "DAGSTER_HOME is not set and there is no ./.dagster_home: set DAGSTER_HOME to the "
            "home your runs were recorded in"
        )
    os.environ["DAGSTER_HOME"] = str(home)


def cmd_runs(args: argparse.Namespace, out) -> int:
    """A recorded run's summary: what each step did, versions, metrics, outputs."""
    from dagster import DagsterInstance, DagsterRunStatus

    from aml_assets.service.runs import print_summary

    _use_project_home(create=False)
    if args.action in ("wait", "cancel"):
        from aml_assets.service.experiment import cli_runs_cancel, cli_runs_wait

        return (cli_runs_wait if args.action == "wait" else cli_runs_cancel)(args, out)
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(limit=200)
        if args.run:
            runs = [r for r in runs if r.run_id.startswith(args.run)]
        if not runs:
            raise AmlAssetsError(
                f"No run {args.run} among the latest 200 runs of {os.environ['DAGSTER_HOME']}"
                if args.run else f"No runs are recorded in {os.environ['DAGSTER_HOME']}"
            )
        if len(runs) > 1 and args.run:
            raise AmlAssetsError(
                f"'{args.run}' matches {len(runs)} runs ({', '.join(r.run_id[:12] for r in runs[:5])}); "
                "give more of the id"
            )
        run = runs[0]
        stats = instance.get_run_stats(run.run_id)
        seconds = (stats.end_time or stats.start_time or 0) - (stats.start_time or 0)
        print_summary(
            instance, run.run_id, run.job_name, run.status == DagsterRunStatus.SUCCESS, seconds, out
        )
    return 0


def cmd_gc(args: argparse.Namespace, out) -> int:
    from aml_assets.reuse.gc import collect_garbage

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
    from aml_assets.reuse.verify import verify_store

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


def _pool_settings(args: argparse.Namespace) -> tuple[SparkPool, str]:
    """The Spark pool named ``args.name`` in the project's Definitions (``-f``, else
    ./definitions.py if there is one), else a default local pool; and where it came from."""
    from aml_assets.compute.spark import SparkPool

    path = Path(args.file) if args.file else Path("definitions.py")
    if not args.file and not path.is_file():
        return SparkPool(), "the default local pool settings (no -f given, no ./definitions.py)"
    if not path.is_file():
        raise AmlAssetsError(f"Definitions file {path} does not exist; give the project's with -f.")
    from aml_assets.compute.definitions_file import definitions_resources, import_definitions_file

    module = import_definitions_file(path, "aml_assets_cli_definitions")
    pools = {k: r for k, r in definitions_resources(module).items() if isinstance(r, SparkPool)}
    pool = pools.get(args.name)
    if pool is None:
        raise AmlAssetsError(
            f"{path} has no Spark pool '{args.name}'; its Spark pools: "
            f"{', '.join(sorted(pools)) or 'none'}."
        )
    if pool.remote:
        raise AmlAssetsError(
            f"Spark pool '{args.name}' attaches to the Spark Connect server {pool.remote}: it "
            "starts no JVM, so there is nothing to keep warm."
        )
    return pool, str(path)


def cmd_pool(args: argparse.Namespace, out) -> int:
    from aml_assets.compute import warm_pool

    if args.action == "start":
        pool, source = _pool_settings(args)
        conf = pool.spark_conf()
        started_at = time.perf_counter()
        warm, started, note = warm_pool.start(args.name, conf, args.port, args.timeout)
        if note:
            print(f"Previous server of '{args.name}': {note}.", file=out)
        if not started:
            print(f"Warm Spark pool '{args.name}' is already running at {warm.url} (pid {warm.pid}).", file=out)
            changed = warm.settings_problems(conf, lambda key: False)
            if changed:
                print(f"It runs with other settings than {source} gives now ({'; '.join(changed)}); "
                      f"restart it to apply them: aml-assets pool stop {args.name}", file=out)
            return 0
        print(
            f"Warm Spark pool '{args.name}' started at {warm.url} (pid {warm.pid}, Spark "
            f"{warm.spark_version}, {conf['spark.master']}, settings from {source}) in "
            f"{time.perf_counter() - started_at:.1f} s. Runs of pool '{args.name}' attach to it; "
            f"log: {warm.log_file}; stop it with: aml-assets pool stop {args.name}",
            file=out,
        )
    elif args.action == "stop":
        warm, running = warm_pool.stop(args.name)
        if warm is None:
            print(f"No warm Spark pool '{args.name}' is running.", file=out)
        elif running:
            print(f"Stopped warm Spark pool '{args.name}' ({warm.url}, pid {warm.pid}).", file=out)
        else:
            print(f"Warm Spark pool '{args.name}' was not running (pid {warm.pid} is gone); "
                  "removed its stale state file.", file=out)
    else:
        found = warm_pool.statuses(args.name)
        if not found:
            print(f"No warm Spark pools (state folder {warm_pool.state_dir()}).", file=out)
        for status in found:
            w = status.pool
            if w is None:
                print(f"{status.name}  {status.state}{f' ({status.note})' if status.note else ''}", file=out)
            else:
                print(f"{status.name}  running  {w.url}  pid {w.pid}  Spark {w.spark_version}  "
                      f"{w.conf.get('spark.master')}  since {_when(w.started_at)}", file=out)
        return 0 if all(s.pool for s in found) or not args.name else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="aml-assets",
        # Plain text for the terminal (the module docstring is reST).
        description="Run pipelines (on a warm runner when one is up) and show their runs; explain "
        "reuse decisions; manage registered datasets; verify stored data; collect garbage; keep "
        "Spark pools warm.",
    )
    parser.add_argument(
        "--root",
        help="a local datastore folder; default: the workspace datastore ($AML_DATASTORE=azure "
        "for Azure Blob, else $AML_DATASTORE_ROOT or the platform's data folder)",
    )
    parser.add_argument(
        "--traceback", action="store_true",
        help="on an error (an invalid pipeline, a bad request), also print the Python traceback",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("explain", help="why a step did or did not reuse its outputs")
    ex.add_argument("step")
    ex.add_argument("--run", help="run id (or prefix) to explain; default: the latest")
    ex.add_argument("--against", help="run id (or prefix) to compare with; default: the run before")
    ex.add_argument("--list", action="store_true", help="list the step's recorded runs")
    ex.set_defaults(func=cmd_explain)

    ds = sub.add_parser("datasets", help="registered datasets; upload data to the datastore")
    ds_sub = ds.add_subparsers(dest="action", required=True)
    up = ds_sub.add_parser(
        "upload",
        help="copy a local file (or a folder's files) onto the workspace datastore, where source "
        "datasets read it",
    )
    up.add_argument("local_path", help="a local file or folder")
    up.add_argument("--to", metavar="FOLDER", default="",
                    help="the folder on the datastore (default: its root), e.g. --to sales")
    up.add_argument("--overwrite", action="store_true", help="replace files that are already there")
    ds_sub.add_parser("list", help="every registered dataset with its versions")
    show = ds_sub.add_parser("show", help="one version's record (latest by default)")
    show.add_argument("name")
    show.add_argument("--version", type=int)
    show.add_argument("--json", action="store_true", help="the whole record as JSON, for machines")
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

    po = sub.add_parser("pool", help="warm Spark pools: a Spark Connect server kept running for a pool")
    po_sub = po.add_subparsers(dest="action", required=True)
    start = po_sub.add_parser("start", help="start the warm pool of a Spark pool (idempotent)")
    start.add_argument("name", help="the Spark pool's resource key, e.g. spark01")
    start.add_argument("-f", "--file", help="the project's Definitions file, for the pool's settings "
                       "(default: ./definitions.py, else the default local pool settings)")
    start.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it (180)")
    po_sub.add_parser("stop", help="stop a warm pool's server").add_argument("name")
    po_sub.add_parser("status", help="where each warm pool listens").add_argument("name", nargs="?")
    po.set_defaults(func=cmd_pool)

    ru = sub.add_parser(
        "run",
        help="run a pipeline's job (on the warm runner when one is up) and summarize what it did",
    )
    ru.add_argument("-f", "--file", default="definitions.py", help="the Definitions file (./definitions.py)")
    ru.add_argument("-j", "--job", help="the job to run (default: the file's only job)")
    ru.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a pipeline parameter, e.g. --param n_estimators=200 (repeatable)",
    )
    ru.add_argument("--regenerate", action="store_true", help="run every step even when its outputs could be reused")
    ru.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="Dagster's console log level (info)")
    ru.add_argument("--no-warm", action="store_true", help="run in this process even when a warm runner is up")
    ru.set_defaults(func=cmd_run)

    rs = sub.add_parser("runs", help="recorded runs of $DAGSTER_HOME")
    rs_sub = rs.add_subparsers(dest="action", required=True)
    rs_show = rs_sub.add_parser("show", help="what a run's steps did, their metrics and outputs (latest by default)")
    rs_show.add_argument("run", nargs="?", help="a run id, or its first characters")
    rs_wait = rs_sub.add_parser("wait", help="follow a run (queued, e.g. from the HTTP API) until it ends")
    rs_wait.add_argument("run", help="a run id, or its first characters")
    rs_wait.add_argument("--timeout", type=float, help="give up after this many seconds (the run goes on)")
    rs_wait.add_argument("--quiet", action="store_true", help="print only the final status")
    rs_sub.add_parser("cancel", help="take a run off the queue, or stop it").add_argument("run")
    rs.set_defaults(func=cmd_runs)
    sm = sub.add_parser(
        "submit", help="queue a run of a published pipeline (or an endpoint's default version) for the daemon"
    )
    target = sm.add_mutually_exclusive_group(required=True)
    target.add_argument("--published", metavar="ID", help="a published pipeline's id")
    target.add_argument("--endpoint", metavar="NAME", help="a pipeline endpoint (its default version)")
    sm.add_argument("-w", "--workspace", default="workspace.yaml", help="Dagster workspace file")
    sm.add_argument("--experiment", help="experiment name (default: the pipeline's or endpoint's)")
    sm.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a parameter value (repeatable); a DataPath as datastore:path")
    sm.add_argument("--regenerate", action="store_true", help="run every step, reusing nothing")
    sm.add_argument("--wait", action="store_true", help="follow the run until it ends")
    sm.set_defaults(func=cmd_submit)

    rn = sub.add_parser("runner", help="the warm runner of $DAGSTER_HOME: runs start without paying for imports")
    rn.add_argument("action", choices=["start", "stop", "status"])
    rn.set_defaults(func=cmd_runner)
    pub = sub.add_parser(
        "publish",
        help="publish a pipeline: its code frozen as a content-addressed snapshot, with an id and "
        "a version (unchanged code returns the existing version)",
    )
    pub.add_argument("name", help="the published pipeline's name")
    pub.add_argument("-f", "--file", default="definitions.py", help="definitions file (default definitions.py)")
    pub.add_argument("-j", "--job", help="the pipeline (job) to publish; default: the file's only one")
    pub.add_argument("--description")
    pub.add_argument("--version-label", help="a free label recorded with the version (numbers are automatic)")
    pub.add_argument("--endpoint", metavar="ENDPOINT", help="also make it the default version of this pipeline endpoint")
    pub.add_argument("--json", action="store_true", help="print the published record as JSON")
    pub.set_defaults(func=cmd_publish)
    pl = sub.add_parser("pipelines", help="published pipelines: list, show, disable, enable")
    pl_sub = pl.add_subparsers(dest="action", required=True)
    pl_sub.add_parser("list", help="every published version")
    for action, text in (("show", "one published version as JSON"), ("disable", "refuse new runs (403)"),
                         ("enable", "accept runs again")):
        pl_sub.add_parser(action, help=text).add_argument("id", help="published id")
    pl.set_defaults(func=cmd_pipelines)
    ep = sub.add_parser("endpoints", help="pipeline endpoints: list, show, set-default")
    ep_sub = ep.add_subparsers(dest="action", required=True)
    ep_sub.add_parser("list", help="every endpoint")
    ep_sub.add_parser("show", help="one endpoint's versions").add_argument("name")
    sd = ep_sub.add_parser("set-default", help="the version runs go to by default")
    sd.add_argument("name")
    sd.add_argument("version", type=int)
    ep.set_defaults(func=cmd_endpoints)

    sc = sub.add_parser("schedules", help="schedules and data-change triggers: list, enable, disable, delete")
    sc_sub = sc.add_subparsers(dest="schedules_command", required=True)
    sc_list = sc_sub.add_parser("list", help="every schedule and trigger, with its state")
    sc_list.add_argument("--json", action="store_true")
    sc_list.add_argument("--pipeline", help="only this pipeline's")
    for action, text in (("enable", "start it (no catch-up of missed ticks)"), ("disable", "stop it"),
                         ("delete", "remove it (its run history stays)")):
        sc_sub.add_parser(action, help=text).add_argument("name")
    sc.set_defaults(func=cmd_schedules)

    en = sub.add_parser("env", help="per-step Python environments: list, build ahead of a run, prune")
    en_sub = en.add_subparsers(dest="action", required=True)
    en_sub.add_parser("list", help="built environments: key, Python, packages, size, last use")
    eb = en_sub.add_parser("build", help="resolve and build the environments a pipeline's steps declare")
    eb.add_argument("-f", "--file", default="definitions.py", help="definitions file (default definitions.py)")
    eb.add_argument("-j", "--job", help="the pipeline (job); default: the file's only one")
    eb.add_argument("--step", help="only this step's environment")
    ep = en_sub.add_parser(
        "prune", help="remove environments unused for N days, incomplete ones, leftovers of killed builds"
    )
    ep.add_argument("--older-than-days", type=float, default=30.0, help="default 30")
    ep.add_argument("--dry-run", action="store_true", help="list what would be removed")
    en.set_defaults(func=cmd_env)

    sv = sub.add_parser("serve", help="the HTTP API of published pipelines alone (loopback by default)")
    sv.add_argument("--workspace", default="workspace.yaml")
    sv.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8787)
    sv.add_argument("--webserver-url", help="the Dagster UI's URL, for DagsterRunUrl in answers")
    sv.add_argument("--base-url", help="the API's public URL when behind a proxy")
    sv.add_argument("--max-body-bytes", type=int, default=1_048_576)
    sv.add_argument("--ssl-certfile")
    sv.add_argument("--ssl-keyfile")
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sv.set_defaults(func=cmd_serve)
    tk = sub.add_parser("tokens", help="bearer tokens of the HTTP API")
    tk_sub = tk.add_subparsers(dest="action", required=True)
    tk_sub.add_parser("create", help="create a token; prints its secret once").add_argument("name")
    tk_sub.add_parser("list", help="tokens (never their secrets)")
    tk_sub.add_parser("revoke", help="revoke a token").add_argument("token", help="its id or name")
    tk.set_defaults(func=cmd_tokens)

    wk = sub.add_parser(
        "worker",
        help="a Celery worker of CPU clusters: runs the steps queued for the named compute targets",
    )
    wk.add_argument("targets", nargs="+", metavar="TARGET", help="compute targets (queues) it serves, e.g. cpucluster spark01")
    wk.add_argument("--concurrency", "-c", type=int, default=1, help="steps it runs at once (default 1)")
    wk.add_argument("--broker", help="Redis URL of the cluster's broker (default $AML_CELERY_BROKER)")
    wk.add_argument("--hostname", "-n", help="its Celery node name (default TARGETS-PID@HOST; unique per worker)")
    wk.add_argument("--file", "-f", help="the project's definitions file: preloaded, and its CeleryCpuCluster "
                    "settings (broker, step timeouts) apply")
    wk.add_argument("--loglevel", "-l", default="INFO", help="worker log level (default INFO)")
    wk.set_defaults(func=cmd_worker)

    upp = sub.add_parser(
        "up",
        help="start the service on loopback: the Dagster UI, the dagster-daemon (run queue, "
        "schedules, triggers) and the HTTP API, on $DAGSTER_HOME (./.dagster_home by default)",
    )
    upp.add_argument("--workspace", default="workspace.yaml", help="Dagster workspace file (default workspace.yaml)")
    upp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    upp.add_argument("--ui-port", type=int, default=3000, help="port of the Dagster UI (default 3000)")
    upp.add_argument("--api-port", type=int, default=8787, help="port of the HTTP API (default 8787)")
    upp.add_argument("--detach", action="store_true", help="run in the background; stop with 'aml-assets down'")
    cl = upp.add_argument_group(
        "a local cluster (--cluster): PostgreSQL, Redis, Azurite, a Spark standalone master+worker, "
        "the UI, the daemon and Celery workers, on loopback (service/cluster_up.py)"
    )
    cl.add_argument("--cluster", action="store_true", help="start the local cluster instead of the service")
    cl.add_argument("--workers", type=int, default=2, help="Celery workers of the cluster (default 2)")
    cl.add_argument("--concurrency", type=int, default=1, help="steps each worker runs at once (default 1)")
    upp.set_defaults(func=cmd_up)
    dn = sub.add_parser("down", help="stop the service started by 'aml-assets up' (or --cluster: the cluster)")
    dn.add_argument("--cluster", action="store_true", help="stop the local cluster started by 'aml-assets up --cluster'")
    cu = sub.add_parser("cluster", help="the local cluster: 'aml-assets cluster env' prints the exports that select it")
    cu.add_argument("action", choices=["env"], help="env: export lines for runs on the cluster (eval them)")
    for command in (upp, dn, cu):
        command.add_argument(
            "--cluster-dir", type=Path, default=Path(os.environ.get("AML_CLUSTER_DIR", ".aml_cluster")),
            help="the cluster's folder: its servers' data, logs and state (default $AML_CLUSTER_DIR or ./.aml_cluster)",
        )
    dn.set_defaults(func=cmd_down)
    cu.set_defaults(func=cmd_cluster)
    return parser


def cmd_run(args: argparse.Namespace, out) -> int:
    from aml_assets.service import runner
    from aml_assets.service.runs import RunRequest, execute

    _use_project_home(create=True)
    request = RunRequest(
        definitions=args.file,
        job=args.job,
        parameters=RunRequest.parse_parameters(args.param),
        regenerate=args.regenerate,
        log_level=args.log_level,
    )
    if not args.no_warm:
        code = runner.run_warm(request.to_json())
        if code is not None:
            return code
    return execute(request, out)


def cmd_runner(args: argparse.Namespace, out) -> int:
    from aml_assets.service import runner

    home = runner.dagster_home()
    if home is None:
        raise AmlAssetsError(
            "DAGSTER_HOME is not set: the warm runner serves one Dagster home; export "
            "DAGSTER_HOME=/path/to/home (the Makefile uses ./.dagster_home)"
        )
    if args.action == "start":
        try:
            info = runner.start(home)
        except RuntimeError as exc:
            raise AmlAssetsError(str(exc)) from None
        state = "already running" if info.get("already") else "started"
        print(f"Warm runner {state} (pid {info['pid']}), listening on {info['socket']}", file=out)
    elif args.action == "stop":
        print("Warm runner stopped." if runner.stop(home) else "No warm runner was running.", file=out)
    else:
        info = runner.status(home)
        if info is None:
            print(f"There is no warm runner for {home}.", file=out)
        else:
            print(f"Warm runner (pid {info['pid']}) listening on {info['socket']}", file=out)
    return 0


def _load_pipeline(definitions: str, job: str | None):
    """The pipeline behind ``job`` in a definitions file (imported as Dagster would load it)."""
    from aml_assets.compute.definitions_file import import_definitions_file
    from aml_assets.pipeline import definition

    path = Path(definitions)
    import_definitions_file(path, f"_aml_definitions_{path.stem}")
    built = definition.built_pipeline_names()
    if job is None:
        if len(built) != 1:
            raise AmlAssetsError(
                f"'{path.name}' builds {len(built)} pipelines ({', '.join(built) or 'none'}); name one with -j."
            )
        job = built[0]
    pipeline = definition.built_pipeline(job)
    if pipeline is None:
        raise AmlAssetsError(
            f"'{path.name}' builds no pipeline '{job}' (it builds: {', '.join(built) or 'none'}); "
            "a pipeline is found when the file calls Pipeline.to_definitions(...)."
        )
    return pipeline


def cmd_publish(args: argparse.Namespace, out) -> int:
    """Publish a pipeline's current code as a new (or the unchanged) version."""
    from aml_assets.pipeline.publish import PipelineEndpoint, PublishError

    pipeline = _load_pipeline(args.file, args.job)
    before = {p.id for p in _published_list(args.name)}
    published = pipeline.publish(args.name, args.description, args.version_label, datastore=_datastore(args))
    endpoint = None
    if args.endpoint:
        try:
            endpoint = PipelineEndpoint.get(args.endpoint, published.datastore)
        except PublishError as exc:
            if not exc.not_found:
                raise
            endpoint = PipelineEndpoint.publish(args.endpoint, published, args.description, published.datastore)
        else:
            endpoint.add_default(published)
            endpoint = PipelineEndpoint.get(args.endpoint, published.datastore)
    if args.json:
        body = published.to_json()
        body["id"] = published.id  # for shell scripts: jq -r .id
        if endpoint is not None:
            body["EndpointRecord"] = endpoint.to_json()
        print(json.dumps(body, indent=1, default=str), file=out)
        return 0
    state = "unchanged: the same code and structure as before" if published.id in before else "new"
    print(f"Published '{published.name}' version {published.version} ({state})", file=out)
    print(f"  id        {published.id}", file=out)
    print(f"  job       {published.pipeline_name}", file=out)
    print(f"  runs URL  POST <api>{published.endpoint}", file=out)
    if endpoint is not None:
        print(
            f"  endpoint  '{endpoint.name}' default version {endpoint.default_version}: POST <api>{endpoint.endpoint}",
            file=out,
        )
    return 0


def _published_list(name: str):
    from aml_assets.pipeline.publish import PublishedPipeline, PublishError

    try:
        return PublishedPipeline.list(name=name)
    except PublishError:
        return []


def cmd_pipelines(args: argparse.Namespace, out) -> int:
    """Published pipelines: list, show, disable, enable."""
    from aml_assets.pipeline.publish import PublishedPipeline

    store = _datastore(args)
    if args.action == "list":
        found = PublishedPipeline.list(datastore=store)
        if not found:
            print("No published pipelines (publish one with 'aml-assets publish NAME').", file=out)
        for p in found:
            label = f" ({p.version_label})" if p.version_label else ""
            print(f"{p.id}  {p.name} v{p.version}{label}  {p.status}  job {p.pipeline_name}  {p.created}", file=out)
        return 0
    published = PublishedPipeline.get(args.id, datastore=store)
    if args.action == "show":
        print(json.dumps(published.to_json(), indent=1, default=str), file=out)
    elif args.action == "disable":
        published.disable()
        print(f"Disabled {published.name} v{published.version}: submissions get 403 until enabled.", file=out)
    else:
        published.enable()
        print(f"Enabled {published.name} v{published.version}.", file=out)
    return 0


def cmd_endpoints(args: argparse.Namespace, out) -> int:
    """Pipeline endpoints: list, show, set-default."""
    from aml_assets.pipeline.publish import PipelineEndpoint

    store = _datastore(args)
    if args.action == "list":
        found = PipelineEndpoint.list(store)
        if not found:
            print("No pipeline endpoints (create one with 'aml-assets publish NAME --endpoint E').", file=out)
        for e in found:
            print(f"{e.name}  default v{e.default_version}  versions {len(e.list_versions())}  {e.endpoint}", file=out)
        return 0
    endpoint = PipelineEndpoint.get(args.name, store)
    if args.action == "set-default":
        endpoint.set_default(args.version)
        endpoint = PipelineEndpoint.get(args.name, store)
    print(json.dumps(endpoint.to_json(), indent=1, default=str), file=out)
    return 0


def cmd_schedules(args: argparse.Namespace, out) -> int:
    """Schedules and data-change triggers: list, enable, disable, delete."""
    from aml_assets.service.schedules import cli_schedules

    if os.environ.get("DAGSTER_HOME") or Path(".dagster_home").is_dir():
        _use_project_home(create=False)  # so the UI's on/off state follows too
    return cli_schedules(args, out)


def cmd_submit(args: argparse.Namespace, out) -> int:
    from aml_assets.service.experiment import cli_submit

    _use_project_home(create=True)
    return cli_submit(args, out)


def cmd_env(args: argparse.Namespace, out) -> int:
    """``aml-assets env list | build | prune``: per-step Python environments."""
    from aml_assets.compute.environments import cli_env

    if args.action != "build":
        return cli_env(args, out)
    pipeline = _load_pipeline(args.file, args.job)
    steps = [(s.name, s.effective_environment()) for s in pipeline.steps]  # the pipeline default applied
    if args.step is not None:
        names = [name for name, _ in steps]
        if args.step not in names:
            raise AmlAssetsError(
                f"Pipeline '{pipeline.name}' has no step '{args.step}' (its steps: {', '.join(names)})."
            )
        steps = [(n, e) for n, e in steps if n == args.step]
    # Locks are recorded on the workspace datastore, so every machine builds the same packages.
    return cli_env(args, out, steps=steps, store=_datastore(args))


def cmd_serve(args: argparse.Namespace, out) -> int:
    """The HTTP API alone (``up`` starts it with the UI and the daemon)."""
    from aml_assets.service.api import cli_serve

    _use_project_home(create=True)
    return cli_serve(args, out)


def cmd_tokens(args: argparse.Namespace, out) -> int:
    from aml_assets.service.tokens import cli_tokens

    _use_project_home(create=True)  # tokens may be created before the first `up`
    return cli_tokens(args, out)


def cmd_worker(args: argparse.Namespace, out) -> int:
    """A Celery worker serving CPU-cluster queues (runs until SIGTERM / Ctrl-C)."""
    from aml_assets.compute.celery_worker import run_worker

    run_worker(
        args.targets,
        concurrency=args.concurrency,
        broker=args.broker,
        hostname=args.hostname,
        definitions=args.file,
        loglevel=args.loglevel,
    )
    return 0


def cmd_up(args: argparse.Namespace, out) -> int:
    """The service: webserver, daemon and HTTP API on loopback, on the project's instance."""
    from aml_assets.service.up import ServiceSettings, up, up_detached

    if args.cluster:
        from aml_assets.service.cluster_up import ClusterSettings, up_cluster

        if args.host != "127.0.0.1":
            raise AmlAssetsError(
                "--cluster listens on 127.0.0.1 only (its servers trust loopback); for workers on "
                "other machines see the README's 'Scaling out'."
            )
        cluster = ClusterSettings(
            directory=args.cluster_dir, workspace=Path(args.workspace), ui_port=args.ui_port,
            workers=args.workers, concurrency=args.concurrency,
        )
        return up_cluster(cluster, out, detach=args.detach)
    _use_project_home(create=True)
    settings = ServiceSettings(
        workspace=Path(args.workspace), host=args.host, ui_port=args.ui_port, api_port=args.api_port
    )
    home = Path(os.environ["DAGSTER_HOME"])
    return (up_detached if args.detach else up)(settings, home, out)


def cmd_down(args: argparse.Namespace, out) -> int:
    from aml_assets.service.up import down

    if args.cluster:
        from aml_assets.service.cluster_up import down_cluster

        return down_cluster(args.cluster_dir, out)
    _use_project_home(create=False)
    return down(Path(os.environ["DAGSTER_HOME"]), out)


def cmd_cluster(args: argparse.Namespace, out) -> int:
    """``cluster env``: the exports that select the running local cluster."""
    from aml_assets.service.cluster_up import cluster_env_lines

    print("\n".join(cluster_env_lines(args.cluster_dir)), file=out)
    return 0


def main(argv: Sequence[str] | None = None, out=None) -> int:
    """Entry point of ``aml-assets``."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, out)
    except AmlAssetsError as exc:
        if args.traceback:
            import traceback

            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
