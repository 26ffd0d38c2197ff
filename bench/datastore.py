"""Benchmark of the datastore API against raw copies of the same bytes, in ONE run.

    .venv/bin/python bench/datastore.py                # ~200 MB Parquet dataset
    .venv/bin/python bench/datastore.py --size-mb 32   # quick smoke run

A Parquet file of random floats (incompressible, so its size is what moves) is written to a local
folder once. Then, interleaved repetition by repetition (so machine drift hits both alike), with
medians reported:

- Azure Blob on a real Azurite (started and stopped here): ``AzureBlobDatastore.publish_dir`` of
  the folder then ``download`` back, against adlfs ``fs.put(src/, dst/, recursive=True)`` and
  ``fs.get(...)`` of the same folder on the same emulator;
- local disk: ``LocalDatastore.publish_dir`` (a finished scratch folder on the datastore's
  filesystem is renamed into place, which is the point of ``scratch_dir``) then ``download``,
  against ``shutil.copytree`` of the same folder.

Target: datastore time / raw time <= 1.2 for every operation.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_RATIO = 1.2


def make_dataset(folder: Path, size_mb: int) -> int:
    """A Parquet file of random float64 columns, about ``size_mb`` MB; returns its size in bytes."""
    import numpy as np
    import pandas as pd

    columns = 10
    rows = max(1, size_mb * 1_000_000 // (8 * columns))
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.random((rows, columns)), columns=[f"c{i}" for i in range(columns)])
    folder.mkdir(parents=True, exist_ok=True)
    df.to_parquet(folder / "part-00000.parquet", index=False)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).stat().st_size == (b / f).stat().st_size for f in files_a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200, help="dataset size in MB (default 200)")
    parser.add_argument("--repeat", type=int, default=6, help="repetitions per series (default 6)")
    args = parser.parse_args(argv)

    from aml_assets import LocalDatastore
    from aml_assets.data.azure import AzureBlobDatastore
    from tests.support.azurite import AzuriteServer

    work = Path(tempfile.mkdtemp(prefix="aml-bench-datastore-"))
    results: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        results.setdefault(name, []).append(seconds)

    try:
        src = work / "dataset"
        size = make_dataset(src, args.size_mb)
        print(f"dataset: {size / 1e6:.1f} MB Parquet in {src}", file=sys.stderr)

        local = LocalDatastore(name="bench-local", root=str(work / "local-store"))
        with AzuriteServer() as az:
            az.create_container("bench")
            store = AzureBlobDatastore(
                name="bench-azure", container="bench", connection_string=az.connection_string
            )
            raw = az.filesystem(use_listings_cache=False)
            print(f"azurite started in {az.startup_seconds:.1f}s at {az.blob_endpoint}", file=sys.stderr)

            for i in range(args.repeat):
                tag = f"{i}-{uuid.uuid4().hex[:6]}"
                # Alternate which of a compared pair goes first, so warm-up and position
                # effects (page cache, emulator state) do not favour one side.
                first_ds = i % 2 == 0

                def pair(label: str, ds: tuple, raw_: tuple, first_ds: bool = first_ds) -> None:
                    order = [("datastore", ds), ("raw", raw_)]
                    for side, (fn, *fn_args) in order if first_ds else order[::-1]:
                        record(f"{label} {side}", timed(fn, *fn_args))

                # --- Azure: datastore API vs raw adlfs, same bytes, same emulator ----------
                rel = f"ds/{tag}/dataset"
                raw_rel = f"bench/raw/{tag}/dataset"
                back, raw_back = work / f"azure-back-{tag}", work / f"azure-raw-back-{tag}"
                pair(
                    "azure write:",
                    (store.publish_dir, src, rel),
                    (lambda s, d: raw.put(s, d, recursive=True), f"{src}/", f"{raw_rel}/"),
                )
                pair(
                    "azure read:",
                    (store.download, rel, back),
                    (lambda s, d: raw.get(s, d, recursive=True), f"{raw_rel}/", f"{raw_back}/"),
                )
                assert same_tree(src, back / "dataset") and same_tree(src, raw_back), "copies differ"
                shutil.rmtree(back)
                shutil.rmtree(raw_back)

                # --- local disk: datastore API vs shutil.copytree ---------------------------
                scratch = local.scratch_dir("bench")
                shutil.copytree(src, scratch / "dataset")  # the step's finished output (untimed)
                lrel = f"ds/{tag}/dataset"
                lback = work / f"local-back-{tag}"
                pair(
                    "local write:",
                    (local.publish_dir, scratch / "dataset", lrel),
                    (shutil.copytree, src, work / f"local-raw-{tag}"),
                )
                pair(
                    "local read:",
                    (local.download, lrel, lback),
                    (shutil.copytree, local.local_path(lrel), work / f"local-raw-back-{tag}"),
                )
                assert same_tree(src, lback / "dataset"), "local copy differs"
                for p in (lback, work / f"local-raw-{tag}", work / f"local-raw-back-{tag}", scratch):
                    shutil.rmtree(p, ignore_errors=True)
                local.delete(lrel)
                store.delete(rel)
                raw.rm(f"bench/raw/{tag}", recursive=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb = size / 1e6
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"Datastore benchmark: {mb:.1f} MB Parquet, median of {args.repeat} interleaved repetitions")
    print(f"{'operation':<38} {'seconds':>8} {'MB/s':>9}")
    for name, seconds in sorted(med.items()):
        print(f"{name:<38} {seconds:8.3f} {mb / seconds:9.1f}")
    print()
    print(f"{'ratio datastore / raw':<38} {'ratio':>8} {'target':>9}")
    ok = True
    for kind in ("azure write", "azure read", "local write", "local read"):
        ds, rw = med[f"{kind}: datastore"], med[f"{kind}: raw"]
        ratio = ds / rw
        ok &= ratio <= TARGET_RATIO
        print(f"{kind:<38} {ratio:8.2f} {'<= ' + str(TARGET_RATIO):>9} {'ok' if ratio <= TARGET_RATIO else 'MISSED'}")
    print("azure: datastore = publish_dir / download; raw = adlfs fs.put / fs.get (recursive)")
    print("local: datastore = publish_dir (a rename: scratch_dir is on the datastore's filesystem)")
    print("       / download; raw = shutil.copytree")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
