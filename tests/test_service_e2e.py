"""The service end to end, with the real parts: ``aml-assets up`` starts dagster-webserver, the
dagster-daemon and the HTTP API as processes on a temporary home; a published version of the
reference pipeline is called over HTTP with Azure's payload; the README's own curl and Python
examples run against it.

What is asserted (issue 7's acceptance):
- a POST with a changed parameter starts a run (queued, started by the daemon) that finishes with
  only the step using that parameter rerun, visible through GET and in Dagster's run storage;
- the same POST without a token gets 401 and starts nothing; a bad parameter gets 400 naming it;
- a published version keeps running its own code after the script changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.webserver import free_port

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["definitions.py", "workspace.yaml", "dagster.yaml"]
PROJECT_DIRS = ["code", "data", "resources"]
RUN_TIMEOUT = 300


class Service:
    def __init__(self, project: Path, env: dict[str, str], api_url: str, ui_url: str, token: str):
        self.project, self.env, self.api, self.ui, self.token = project, env, api_url, ui_url, token

    def headers(self, token: str | None = "default") -> dict[str, str]:
        token = self.token if token == "default" else token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [sys.executable, "-m", "aml_assets.cli", *args], cwd=self.project, env=self.env,
            capture_output=True, text=True, timeout=600,
        )
        if check:
            assert out.returncode == 0, f"aml-assets {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
        return out

    def wait(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            response = requests.get(f"{self.api}/api/v1/runs/{run_id}", headers=self.headers(), timeout=30)
            assert response.status_code == 200, response.text
            body = response.json()
            if body["Status"] in ("Finished", "Failed", "Canceled"):
                return body
            time.sleep(1)
        raise AssertionError(f"run {run_id} did not finish in {timeout} s; last answer: {body}")

    def run_count(self) -> int:
        from dagster import DagsterInstance

        with DagsterInstance.from_config(self.env["DAGSTER_HOME"]) as instance:
            return len(instance.get_run_ids())


def _copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.mktemp("service")
    project = _copy_project(base / "project")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(base / "home"),
        "AML_DATASTORE_ROOT": str(base / "datastore"),
        "AML_CACHE_DIR": str(base / "cache"),
        "AML_STATE_DIR": str(base / "state"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("AML_DATASTORE", None)
    (base / "home").mkdir()
    ui_port, api_port = free_port(), free_port()
    svc = Service(project, env, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}", "")
    created = svc.cli("tokens", "create", "e2e")
    match = re.search(r"\b(aml_[A-Za-z0-9_\-]{20,})", created.stdout)
    assert match, f"no token in the output of 'tokens create': {created.stdout}"
    svc.token = match.group(1)
    up = svc.cli(
        "up", "--detach", "--workspace", "workspace.yaml", "--ui-port", str(ui_port), "--api-port", str(api_port),
        check=False,
    )
    assert up.returncode == 0, f"aml-assets up failed:\n{up.stdout}\n{up.stderr}"
    assert svc.api in up.stdout and svc.ui in up.stdout, up.stdout
    try:
        yield svc
    finally:
        down = svc.cli("down", check=False)
        logs = Path(env["DAGSTER_HOME"], "aml", "logs")
        if down.returncode != 0:
            print(down.stdout, down.stderr)
        for log in sorted(logs.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def published(service: Service) -> dict:
    out = service.cli("publish", "titanic", "-f", "definitions.py", "-j", "synapse_pipeline", "--endpoint", "titanic", "--json")
    return json.loads(out.stdout)


def _steps(body: dict) -> dict[str, dict]:
    return {s["Name"]: s for s in body["Steps"]}


def test_post_runs_only_the_step_using_the_changed_parameter(service: Service, published: dict) -> None:
    url = f"{service.api}/api/v1/pipelines/{published['Id']}/runs"
    payload = {"ExperimentName": "e2e", "ParameterAssignments": {"n_estimators": 20}}
    first = requests.post(url, headers=service.headers(), json=payload, timeout=60)
    assert first.status_code in (200, 202), first.text
    first_id = first.json()["Id"]
    done = service.wait(first_id)
    assert done["Status"] == "Finished", done

    payload["ParameterAssignments"]["n_estimators"] = 30
    second = requests.post(url, headers=service.headers(), json=payload, timeout=60)
    assert second.status_code in (200, 202), second.text
    body = service.wait(second.json()["Id"])
    assert body["Status"] == "Finished", body
    steps = _steps(body)
    assert steps["dataprep"]["Reused"] is True, steps
    assert steps["train"]["Reused"] is False, steps
    assert "n_estimators" in (steps["train"].get("RunsBecause") or ""), steps

    # An ordinary Dagster run, in the instance's run storage, tagged with its experiment.
    from dagster import DagsterInstance, DagsterRunStatus

    with DagsterInstance.from_config(service.env["DAGSTER_HOME"]) as instance:
        run = instance.get_run_by_id(second.json()["Id"])
        assert run is not None and run.status == DagsterRunStatus.SUCCESS
        assert run.tags.get("aml/experiment") == "e2e"
        assert run.tags.get("aml/published_id") == published["Id"]
        assert run.run_config["resources"]["pipeline"]["config"]["n_estimators"] == 30


def test_without_a_token_401_and_nothing_starts(service: Service, published: dict) -> None:
    url = f"{service.api}/api/v1/pipelines/{published['Id']}/runs"
    before = service.run_count()
    payload = {"ExperimentName": "e2e", "ParameterAssignments": {"n_estimators": 40}}
    for headers in ({}, service.headers("aml_not-a-real-token-000000000000000")):
        response = requests.post(url, headers=headers, json=payload, timeout=30)
        assert response.status_code == 401, response.text
    bad = requests.post(
        url, headers=service.headers(), json={"ExperimentName": "e2e", "ParameterAssignments": {"n_estimatorz": 5}},
        timeout=30,
    )
    assert bad.status_code == 400, bad.text
    assert "n_estimatorz" in bad.text and "n_estimators" in bad.text, bad.text
    wrong_type = requests.post(
        url, headers=service.headers(), json={"ExperimentName": "e2e", "ParameterAssignments": {"n_estimators": "many"}},
        timeout=30,
    )
    assert wrong_type.status_code == 400 and "n_estimators" in wrong_type.text, wrong_type.text
    time.sleep(1)
    assert service.run_count() == before


def _readme_block(heading: str, language: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    assert blocks, f"README section '{heading}' has no {language} block"
    return blocks


def test_readme_examples_run(service: Service, published: dict) -> None:
    env = {**service.env, "AML_API": service.api, "AML_TOKEN": service.token, "PIPELINE_ID": published["Id"]}
    curl_blocks = _readme_block("Publish and call a pipeline", "bash")
    python_blocks = _readme_block("Publish and call a pipeline", "python")
    # The curl examples (the block marked as calling the API).
    calls = [b for b in curl_blocks if "curl" in b]
    assert calls, "the README shows no curl call"
    for block in calls:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], env=env, cwd=service.project,
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert out.returncode == 0, f"README curl block failed:\n{block}\n{out.stdout}\n{out.stderr}"
    for block in python_blocks:
        if "requests." not in block and "Experiment" not in block:
            continue
        out = subprocess.run([sys.executable, "-c", block], env=env, cwd=service.project,
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert out.returncode == 0, f"README Python block failed:\n{block}\n{out.stdout}\n{out.stderr}"


def test_cli_submit_waits_and_reuses(service: Service, published: dict) -> None:
    """`aml-assets submit --endpoint ... --wait`: through the queue and the daemon, followed to
    the end; both steps reused (the same parameter value ran in the first test)."""
    out = service.cli("submit", "--endpoint", "titanic", "--experiment", "e2e", "--param", "n_estimators=30", "--wait")
    assert "Finished" in out.stdout or "succeeded" in out.stdout, out.stdout
    run_id = re.search(r"Run ([0-9a-f-]{36}) submitted", out.stdout).group(1)
    body = requests.get(f"{service.api}/api/v1/runs/{run_id}", headers=service.headers(), timeout=30).json()
    assert body["Status"] == "Finished" and all(step["Reused"] for step in body["Steps"]), body
    waited = service.cli("runs", "wait", run_id[:12], "--quiet")
    assert waited.stdout.strip() == f"{run_id} Finished", waited.stdout


def _ui_schedules(service: Service) -> set[str]:
    query = """{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
        ... on RepositoryLocation { repositories { schedules { name } sensors { name } } } } } } } }"""
    response = requests.post(f"{service.ui}/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    names = set()
    for entry in response.json()["data"]["workspaceOrError"]["locationEntries"]:
        for repo in (entry.get("locationOrLoadError") or {}).get("repositories", []):
            names.update(s["name"] for s in repo["schedules"] + repo["sensors"])
    return names


def test_a_schedule_created_while_the_service_runs_goes_live(service: Service, published: dict) -> None:
    """The supervisor sees the new record and reloads the daemon and the UI's code location."""
    assert "hourly_titanic" not in _ui_schedules(service)
    code = (
        "from aml_assets import PublishedPipeline, Schedule, ScheduleRecurrence\n"
        f"Schedule.create('hourly_titanic', pipeline=PublishedPipeline.get({published['Id']!r}), "
        "experiment_name='e2e', recurrence=ScheduleRecurrence('Hour', 1))\n"
    )
    made = subprocess.run([sys.executable, "-c", code], cwd=service.project, env=service.env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    deadline = time.monotonic() + 90
    while "hourly_titanic" not in _ui_schedules(service):
        assert time.monotonic() < deadline, "the UI never showed the new schedule"
        time.sleep(2)
    listed = service.cli("schedules", "list")
    assert "hourly_titanic" in listed.stdout, listed.stdout
    # The reloaded API still answers (it was restarted with the daemon).
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{service.api}/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the API did not come back after the reload"
        time.sleep(1)
