"""The reference project served by a real dagster-webserver: its GraphQL API and its UI.

One webserver per module (``workspace.yaml`` from the repository root, its own DAGSTER_HOME,
datastore and stat cache). Runs are launched over GraphQL, as the UI's launchpad does.
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

    started, status = time.monotonic(), None
    while time.monotonic() - started < 240:
        run = server.graphql(
            "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }",
            {"id": run_id},
        )["runOrError"]
        status = run.get("status")
        if status in TERMINAL_RUN_STATUSES:
            break
        time.sleep(2)
    return {"run_id": run_id, "status": status, "seconds": time.monotonic() - started}


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
    assert nodes["titanic_prepared"]["groupName"] == GROUP

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
    # The graph's nodes, laid out left to right in dependency order (titanic, from the
    # "datasets" group, is drawn as the upstream link into this group) ...
    nodes = graph_nodes(dom)
    assert {"titanic", "titanic_prepared", "titanic_model"} <= set(nodes), (nodes, text[:80])
    assert nodes["titanic"][0] < nodes["titanic_prepared"][0] < nodes["titanic_model"][0], nodes
    # ... both materialized by the launched run, with the three checks passed.
    assert text.count("Materialized") == 2, text
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
