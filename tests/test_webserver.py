"""The reference project served by a real dagster-webserver: its GraphQL API and its UI.

One webserver per module (``workspace.yaml`` from the repository root, its own DAGSTER_HOME,
datastore and stat cache). Runs are launched over GraphQL, as the UI's launchpad and its
"Materialize all" button do. Screenshots of the asset graph and of a reused run's page are saved
under ``artifacts/screenshots/`` at the repository root (``$AML_ARTIFACTS_DIR/screenshots`` when
set), which CI keeps as artifacts.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.webserver import (
    CHROMIUM,
    CHROMIUM_INSTALL_COMMAND,
    TERMINAL_RUN_STATUSES,
    DagsterWebserver,
    WebserverStartError,
    chromium_dom,
    chromium_screenshot,
    graph_nodes,
    png_pixel_bytes,
    png_size,
    visible_text,
)

pytestmark = [pytest.mark.webserver, pytest.mark.slow]

REUSE_TAG = "aml/reuse"  # aml_assets.pipeline.assets.REUSE_TAG, spelled out as a user sees it

REPO = Path(__file__).resolve().parent.parent
JOB = "synapse_pipeline"
GROUP = "synapse_pipeline"
RUN_CONFIG = {
    "resources": {
        "pipeline": {"config": {"n_estimators": 20}},
        "spark01": {"config": {"master": "local[2]"}},
    }
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterWebserver]:
    base = tmp_path_factory.mktemp("webserver")
    ws = DagsterWebserver(
        REPO / "workspace.yaml",
        home=base / "dagster_home",
        env={
            "AML_DATASTORE_ROOT": str(base / "datastore"),
            "AML_CACHE_DIR": str(base / "cache"),
        },
    )
    try:
        ws.start(timeout=60)
    except WebserverStartError as exc:
        pytest.fail(f"dagster-webserver did not start: {exc}", pytrace=False)
    try:
        yield ws
    finally:
        ws.stop()


@pytest.fixture(scope="module")
def job_selector(server: DagsterWebserver) -> dict[str, str]:
    """The GraphQL selector of the job, found through the workspace."""
    data = server.graphql(
        """
        { workspaceOrError { __typename
            ... on Workspace { locationEntries { name locationOrLoadError { __typename
              ... on RepositoryLocation { name repositories { name pipelines { name } } }
              ... on PythonError { message stack } } } }
            ... on PythonError { message } } }
        """
    )
    ws = data["workspaceOrError"]
    assert ws["__typename"] == "Workspace", ws
    found = []
    for entry in ws["locationEntries"]:
        loc = entry["locationOrLoadError"]
        assert loc and loc["__typename"] == "RepositoryLocation", f"location failed to load: {loc}"
        for repo in loc["repositories"]:
            if JOB in [p["name"] for p in repo["pipelines"]]:
                found.append(
                    {
                        "repositoryLocationName": loc["name"],
                        "repositoryName": repo["name"],
                        "pipelineName": JOB,
                    }
                )
    assert len(found) == 1, f"job {JOB} in {len(found)} repositories: {ws}"
    return found[0]


def screenshots_dir() -> Path:
    """Where screenshots are kept for CI: $AML_ARTIFACTS_DIR/screenshots, else the repo's."""
    root = Path(os.environ.get("AML_ARTIFACTS_DIR") or REPO / "artifacts")
    folder = root / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_for_run(server: DagsterWebserver, run_id: str, timeout: float = 240) -> str | None:
    started, status = time.monotonic(), None
    while time.monotonic() - started < timeout:
        run = server.graphql(
            "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }",
            {"id": run_id},
        )["runOrError"]
        status = run.get("status")
        if status in TERMINAL_RUN_STATUSES:
            break
        time.sleep(1)
    return status


def materialize_all(server: DagsterWebserver, job_selector: dict[str, str]) -> str:
    """Launch what the UI's "Materialize all" launches: Dagster's implicit asset job over every
    asset and check, with no run config (``launchPipelineExecution``, as the button sends it)."""
    nodes = server.graphql(
        "{ assetNodes { assetKey { path } "
        "assetChecksOrError { ... on AssetChecks { checks { name } } } } }"
    )["assetNodes"]
    selector = {
        "repositoryLocationName": job_selector["repositoryLocationName"],
        "repositoryName": job_selector["repositoryName"],
        "pipelineName": "__ASSET_JOB",
        "assetSelection": [{"path": n["assetKey"]["path"]} for n in nodes],
        "assetCheckSelection": [
            {"assetKey": {"path": n["assetKey"]["path"]}, "name": c["name"]}
            for n in nodes
            for c in (n["assetChecksOrError"].get("checks") or [])
        ],
    }
    launch = server.graphql(
        """
        mutation Launch($params: ExecutionParams!) {
          launchPipelineExecution(executionParams: $params) { __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message stack }
            ... on Error { message } } }
        """,
        {
            "params": {
                "selector": selector,
                "mode": "default",
                "runConfigData": {},
                "executionMetadata": {"tags": []},
            }
        },
    )["launchPipelineExecution"]
    assert launch["__typename"] == "LaunchRunSuccess", launch
    return launch["run"]["runId"]


@pytest.fixture(scope="module")
def launched_run(server: DagsterWebserver, job_selector: dict[str, str]) -> dict:
    """Launch the job over GraphQL with per-run parameters; wait until it finishes."""
    data = server.graphql(
        """
        mutation Launch($params: ExecutionParams!) {
          launchRun(executionParams: $params) { __typename
            ... on LaunchRunSuccess { run { runId status } }
            ... on RunConfigValidationInvalid { errors { message } }
            ... on PythonError { message stack }
            ... on Error { message } } }
        """,
        {"params": {"selector": job_selector, "runConfigData": RUN_CONFIG}},
    )
    launch = data["launchRun"]
    assert launch["__typename"] == "LaunchRunSuccess", launch
    run_id = launch["run"]["runId"]
    started = time.monotonic()
    status = _wait_for_run(server, run_id)
    return {"run_id": run_id, "status": status, "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def materialized_all(
    server: DagsterWebserver, job_selector: dict[str, str], launched_run: dict
) -> dict[str, str]:
    """"Materialize all" twice after the job's run: the first computes what the job's run
    config changed (train: n_estimators 200, not 20) and reuses dataprep; the second reuses
    every step."""
    runs = {}
    for name in ("first", "second"):
        run_id = materialize_all(server, job_selector)
        status = _wait_for_run(server, run_id)
        if status != "SUCCESS":
            failures = [
                e.get("error", {}).get("message") or e.get("message")
                for e in _run_events(server, run_id)
                if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
            ]
            pytest.fail(f"Materialize all run {run_id} ended {status}: {failures}\n{server.stderr()}")
        runs[name] = run_id
    return runs


def _run_events(server: DagsterWebserver, run_id: str) -> list[dict]:
    return server.graphql(
        """
        query($id: ID!) { runOrError(runId: $id) { ... on Run {
          eventConnection { events { __typename
            ... on MessageEvent { message stepKey }
            ... on ExecutionStepFailureEvent { error { message } }
            ... on RunFailureEvent { message } } } } } }
        """,
        {"id": run_id},
    )["runOrError"]["eventConnection"]["events"]


# --- GraphQL --------------------------------------------------------------------------------
def test_asset_graph_over_graphql(server: DagsterWebserver) -> None:
    data = server.graphql(
        """
        { assetNodes { assetKey { path } dependencyKeys { path } opNames jobNames groupName
            description tags { key value } kinds metadataEntries { label }
            assetChecksOrError { __typename ... on AssetChecks { checks { name } } } }
          repositoriesOrError { ... on RepositoryConnection { nodes { name pipelines { name } } } } }
        """
    )
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert {"titanic", "titanic_prepared", "titanic_model"} <= set(nodes), sorted(nodes)

    deps = {k: sorted("/".join(d["path"]) for d in n["dependencyKeys"]) for k, n in nodes.items()}
    assert deps["titanic"] == []
    assert deps["titanic_prepared"] == ["titanic"]
    assert deps["titanic_model"] == ["titanic_prepared"]

    assert nodes["titanic_prepared"]["opNames"] == ["dataprep"]
    assert nodes["titanic_model"]["opNames"] == ["train"]
    for name in ("titanic", "titanic_prepared", "titanic_model"):
        assert JOB in nodes[name]["jobNames"], (name, nodes[name]["jobNames"])
    assert {n["groupName"] for n in nodes.values()} == {GROUP}  # one group: lineage opens on it

    # The dataset's description and tags are the asset's own (not copies in its metadata), and
    # its kinds name the step that writes it.
    prepared = nodes["titanic_prepared"]
    assert prepared["description"].startswith("Cleaned Titanic features"), prepared
    assert {"key": "sample", "value": "titanic"} in prepared["tags"], prepared["tags"]
    assert not {"aml/description", "aml/tags"} & {e["label"] for e in prepared["metadataEntries"]}
    assert {"dataprep", "spark", "parquet"} <= set(prepared["kinds"]), prepared["kinds"]
    assert "train" in nodes["titanic_model"]["kinds"], nodes["titanic_model"]["kinds"]

    jobs = {p["name"] for r in data["repositoriesOrError"]["nodes"] for p in r["pipelines"]}
    assert JOB in jobs

    checks = nodes["titanic_prepared"]["assetChecksOrError"]
    assert checks["__typename"] == "AssetChecks", checks
    assert {c["name"] for c in checks["checks"]} >= {"expected_columns", "not_null", "row_count"}


def test_launch_run_over_graphql(server: DagsterWebserver, launched_run: dict) -> None:
    run_id = launched_run["run_id"]
    if launched_run["status"] != "SUCCESS":
        events = _run_events(server, run_id)
        failures = [
            e.get("error", {}).get("message") or e.get("message")
            for e in events
            if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
        ]
        pytest.fail(
            f"run {run_id} ended {launched_run['status']} after {launched_run['seconds']:.0f}s\n"
            f"failures: {failures}\n--- webserver stderr ---\n{server.stderr()}"
        )

    # The run used the per-run settings: Spark on local[2] ...
    messages = [e.get("message") or "" for e in _run_events(server, run_id)]
    assert any("SparkSession on local[2]" in m for m in messages), [
        m for m in messages if "Spark" in m
    ]

    asset = server.graphql(
        """
        { assetOrError(assetKey: {path: ["titanic_model"]}) { __typename
            ... on Asset { assetMaterializations(limit: 1) { runId
              metadataEntries { label
                ... on FloatMetadataEntry { floatValue }
                ... on PathMetadataEntry { path } } } } } }
        """
    )["assetOrError"]
    assert asset["__typename"] == "Asset", asset
    (mat,) = asset["assetMaterializations"]
    assert mat["runId"] == run_id
    meta = {e["label"]: e for e in mat["metadataEntries"]}
    assert meta["accuracy"]["floatValue"] >= 0.75, meta["accuracy"]

    # The prepared table's columns carry the types its ExpectedColumns check declares.
    prepared = server.graphql(
        """
        { assetOrError(assetKey: {path: ["titanic_prepared"]}) { ... on Asset {
            assetMaterializations(limit: 1) { metadataEntries { label
              ... on TableSchemaMetadataEntry { schema { columns { name description } } } } } } } }
        """
    )["assetOrError"]["assetMaterializations"][0]["metadataEntries"]
    (schema,) = [e["schema"] for e in prepared if e["label"] == "dagster/column_schema"]
    described = {c["name"]: c["description"] for c in schema["columns"]}
    assert described["Age"] == "declared double (checked by expected_columns)", described

    # ... and n_estimators=20: the model it wrote to the datastore has 20 trees.
    model_dir = Path(meta["uri"]["path"].removeprefix("file://"))
    with open(model_dir / "model.pkl", "rb") as fh:
        model = pickle.load(fh)
    assert model.n_estimators == 20
    assert len(model.estimators_) == 20


# --- the UI in a browser --------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        msg = f"{CHROMIUM} is not installed; install it with: {CHROMIUM_INSTALL_COMMAND}"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return CHROMIUM


@pytest.mark.browser
def test_ui_renders_asset_graph_and_run(
    chromium: str, server: DagsterWebserver, launched_run: dict, tmp_path: Path
) -> None:
    if launched_run["status"] != "SUCCESS":
        pytest.fail("the launched run did not succeed (see test_launch_run_over_graphql)")

    # The Lineage tab of the asset group, as the UI links it (repository "__repository__" of
    # location "definitions.py" is addressed by the location name alone).
    graph_url = f"{server.url}/locations/definitions.py/asset-groups/{GROUP}"
    png = tmp_path / "asset_graph.png"
    chromium_screenshot(graph_url, png, tmp_path / "chrome-profile-1")
    assert png_size(png) == (1600, 1000)
    assert png.stat().st_size > 20_000, f"screenshot looks blank: {png.stat().st_size} bytes"
    assert len(set(png_pixel_bytes(png))) > 64, "screenshot looks blank"

    dom = chromium_dom(graph_url, tmp_path / "chrome-profile-2")
    (tmp_path / "asset_graph.html").write_text(dom)
    text = visible_text(dom)
    assert GROUP in text and "Lineage" in text, text[:40]
    # The graph's nodes, laid out left to right in dependency order (the source dataset is in
    # the pipeline's group, so the lineage is one group, drawn open) ...
    nodes = graph_nodes(dom)
    assert {"titanic", "titanic_prepared", "titanic_model"} <= set(nodes), (nodes, text[:80])
    assert nodes["titanic"][0] < nodes["titanic_prepared"][0] < nodes["titanic_model"][0], nodes
    # ... each naming the step that writes it (a kind under the node) ...
    assert {"dataprep", "train"} <= set(text), text
    # ... all materialized by the launched run, with the three checks passed.
    assert text.count("Materialized") == 3, text
    assert "Never materialized" not in text
    assert "3 / 3 Passed" in text, text

    # The launched run's page: its steps, i.e. the ops that computed the assets.
    run_url = f"{server.url}/runs/{launched_run['run_id']}"
    run_dom = chromium_dom(run_url, tmp_path / "chrome-profile-3")
    (tmp_path / "run.html").write_text(run_dom)
    run_text = visible_text(run_dom)
    for shown in ("Success", JOB, "dataprep", "train"):
        assert shown in run_text, f"{shown!r} not rendered at {run_url}: {run_text[:80]}"
    chromium_screenshot(run_url, tmp_path / "run.png", tmp_path / "chrome-profile-4")
    print(f"screenshots: {png} {tmp_path / 'run.png'}")


# --- "Materialize all" and reuse, in the UI ---------------------------------------------------
def _instance(server: DagsterWebserver):
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    return DagsterInstance.from_ref(InstanceRef.from_dir(str(server.home)))


def test_materialize_all_runs_with_the_pipelines_executor(
    server: DagsterWebserver, materialized_all: dict[str, str]
) -> None:
    """The UI's button launches Dagster's implicit asset job; it must run as the pipeline's
    job does: every step in the run's one process, none in a subprocess of its own."""
    instance = _instance(server)
    for run_id in materialized_all.values():
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.job_name == "__ASSET_JOB", run
        pids = {
            r.step_key: r.dagster_event.pid
            for r in instance.all_logs(run_id)
            if r.step_key and r.dagster_event and r.dagster_event.event_type_value == "STEP_START"
        }
        assert set(pids) == {"titanic", "dataprep", "train"}, pids
        assert len(set(pids.values())) == 1, f"steps ran in several processes: {pids}"
        messages = [e.get("message") or "" for e in _run_events(server, run_id)]
        assert not any("multiprocess executor" in m or "Launching subprocess" in m for m in messages)


def _latest_materializations(server: DagsterWebserver, asset: str, limit: int = 5) -> list[dict]:
    return server.graphql(
        """
        query($path: [String!]!, $limit: Int) { assetOrError(assetKey: {path: $path}) {
          ... on Asset { assetMaterializations(limit: $limit) { runId
            tags { key value }
            metadataEntries { label ... on TextMetadataEntry { text } } } } } }
        """,
        {"path": [asset], "limit": limit},
    )["assetOrError"]["assetMaterializations"]


def test_reuse_is_marked_on_materializations_and_runs(
    server: DagsterWebserver, launched_run: dict, materialized_all: dict[str, str]
) -> None:
    first, second = materialized_all["first"], materialized_all["second"]
    by_run = {m["runId"]: m for m in _latest_materializations(server, "titanic_model")}
    tags = {run: {t["key"]: t["value"] for t in m["tags"]} for run, m in by_run.items()}
    text = {run: {e["label"]: e.get("text") for e in m["metadataEntries"]} for run, m in by_run.items()}
    # The first "Materialize all" trained again (n_estimators 200, the job's run had 20) ...
    assert tags[first][REUSE_TAG] == "computed", tags[first]
    assert text[first][REUSE_TAG].startswith("computed: step 'train' ran because"), text[first]
    # ... the second changed nothing, so it reused that training, and says so.
    assert tags[second][REUSE_TAG] == "reused", tags[second]
    assert text[second][REUSE_TAG] == f"reused: outputs of run {first[:8]} (nothing changed)"
    # The data version is the content hash: a reuse leaves it as it was.
    assert tags[second]["dagster/data_version"] == tags[first]["dagster/data_version"]

    run_tags = server.graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { tags { key value } } } }",
        {"id": second},
    )["runOrError"]["tags"]
    run_tags = {t["key"]: t["value"] for t in run_tags}
    assert run_tags[f"{REUSE_TAG}/dataprep"] == "reused", run_tags
    assert run_tags[f"{REUSE_TAG}/train"] == "reused", run_tags

    # The step log says it in one INFO line too.
    messages = [e.get("message") or "" for e in _run_events(server, second)]
    assert any(m.startswith("Step 'train' reused outputs of run") for m in messages), messages


@pytest.mark.browser
def test_ui_shows_reuse_and_saves_screenshots(
    chromium: str, server: DagsterWebserver, materialized_all: dict[str, str], tmp_path: Path
) -> None:
    first, second = materialized_all["first"], materialized_all["second"]
    shots = screenshots_dir()

    graph_url = f"{server.url}/asset-groups"  # the global lineage ("Lineage" in the nav)
    chromium_screenshot(graph_url, shots / "asset_graph.png", tmp_path / "profile-1")
    graph_text = visible_text(chromium_dom(graph_url, tmp_path / "profile-2"))
    assert {"titanic", "titanic_prepared", "titanic_model", "dataprep", "train"} <= set(graph_text)
    assert graph_text.count("Materialized") == 3, graph_text

    # The reused run's page: the step log and the materializations say what was reused.
    run_url = f"{server.url}/runs/{second}"
    chromium_screenshot(run_url, shots / "reused_run.png", tmp_path / "profile-3")
    run_text = visible_text(chromium_dom(run_url, tmp_path / "profile-4"))
    assert "Success" in run_text, run_text[:80]
    assert f"reused: outputs of run {first[:8]} (nothing changed)" in run_text, run_text
    assert any(t.startswith("Step 'train' reused outputs of run") for t in run_text), run_text

    # The asset's latest materialization (its Events tab) opens with the same line.
    events_url = f"{server.url}/assets/titanic_model?view=events"
    chromium_screenshot(events_url, shots / "reused_asset_events.png", tmp_path / "profile-5")
    events_text = visible_text(chromium_dom(events_url, tmp_path / "profile-6"))
    assert f"reused: outputs of run {first[:8]} (nothing changed)" in events_text, events_text
    # The runs list: each run's tags say, step by step, what it reused.
    runs_url = f"{server.url}/runs"
    chromium_screenshot(runs_url, shots / "runs.png", tmp_path / "profile-7")
    runs_text = visible_text(chromium_dom(runs_url, tmp_path / "profile-8"))
    shown = list(zip(runs_text, runs_text[1:], strict=False))
    assert (f"{REUSE_TAG}/train:", "reused") in shown, runs_text
    assert (f"{REUSE_TAG}/train:", "computed") in shown, runs_text
    for png in ("asset_graph.png", "reused_run.png", "reused_asset_events.png", "runs.png"):
        assert png_size(shots / png) == (1600, 1000)
        assert len(set(png_pixel_bytes(shots / png))) > 64, f"{png} looks blank"
