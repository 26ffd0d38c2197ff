"""The HTTP API and its bearer tokens.

The API runs in uvicorn on a free loopback port in a thread, and is called with ``requests``
as any client would (chunked bodies included). Unit cases inject a fake submitter and catalog
and count the submits: a refused request must start nothing. One test goes through the real
``Submitter`` and a real published pipeline and finds the run QUEUED in the instance.
"""

from __future__ import annotations

import json
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn

from aml_assets.pipeline.datapath import DataPath, DataPathParameter
from aml_assets.pipeline.parameters import PipelineParameter
from aml_assets.pipeline.publish import PublishError
from aml_assets.pipeline.tags import (
    ENDPOINT_TAG,
    EXPERIMENT_TAG,
    PUBLISHED_ID_TAG,
    REGENERATE_TAG,
    SUBMITTED_VIA_TAG,
)
from aml_assets.service.api import ApiError, RunRequest, create_app, is_loopback
from aml_assets.service.tokens import TokenError, TokenStore, cli_tokens

# --- fakes ------------------------------------------------------------------------------------


class FakeSubmitter:
    """Records what would have been submitted."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.instance = self  # the API reads a new run's status from the instance

    def get_run_by_id(self, run_id: str) -> Any:
        return type("Run", (), {"status": "QUEUED"})() if any(c["id"] == run_id for c in self.calls) else None

    def datastores(self, job: str) -> list[str]:
        return ["workspace"]

    def refresh_if_older_than(self, timestamp: float) -> None:
        self.refreshed_for = timestamp

    def submit(self, job, run_config=None, tags=None, *, launch_if_no_daemon=False) -> str:
        run_id = str(uuid.uuid4())
        self.calls.append({"job": job, "run_config": run_config, "tags": dict(tags or {}), "id": run_id})
        return run_id


class FakePublished:
    def __init__(self, name: str, version: int, status: str = "Active"):
        self.id = uuid.uuid4().hex
        self.name, self.version, self.status = name, version, status
        self.pipeline_name = "train_job"
        self.datastores = ["workspace"]

    def parameter_objects(self) -> list[Any]:
        return [
            PipelineParameter("n_estimators", 200, min=1, max=5000),
            PipelineParameter("solver", "lbfgs", choices=("lbfgs", "saga")),
            DataPathParameter("input_data", DataPath("workspace", "data/in.csv"), format="csv"),
        ]

    def run_tags(self) -> dict[str, str]:
        return {PUBLISHED_ID_TAG: self.id, "aml/published_pipeline": self.name,
                "aml/published_version": str(self.version)}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "status": self.status}


class FakeEndpoint:
    def __init__(self, name: str, versions: dict[int, FakePublished], default: int):
        self.name, self.versions, self.default_version = name, versions, default

    def get_pipeline(self, version: int | None = None) -> FakePublished:
        number = self.default_version if version is None else version
        if number not in self.versions:
            raise PublishError(f"Endpoint '{self.name}' has no version {number}.", not_found=True)
        return self.versions[number]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "default_version": self.default_version, "versions": sorted(self.versions)}


class FakeCatalog:
    def __init__(self) -> None:
        self.v1 = FakePublished("train", 1)
        self.v2 = FakePublished("train", 2)
        self.off = FakePublished("train", 3, status="Disabled")
        self.by_id = {p.id: p for p in (self.v1, self.v2, self.off)}
        self.ep = FakeEndpoint("train_ep", {1: self.v1, 2: self.v2, 3: self.off}, default=2)

    def pipeline(self, published_id):
        return self.by_id.get(published_id)

    def pipelines(self, name=None):
        return [p for p in self.by_id.values() if name in (None, p.name)]

    def endpoint(self, name):
        return self.ep if name == self.ep.name else None

    def endpoints(self):
        return [self.ep]


# --- a real server on loopback ---------------------------------------------------------------


class Server:
    """uvicorn serving ``app`` in a thread on a free loopback port."""

    def __init__(self, app: Any):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(10)
        self.sock.close()


@pytest.fixture
def tokens(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "home")


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Server] = []

    def start(app: Any) -> Server:
        servers.append(Server(app))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


class Api:
    def __init__(self, url: str, secret: str, submitter: FakeSubmitter, catalog: FakeCatalog):
        self.url, self.secret, self.submitter, self.catalog = url, secret, submitter, catalog

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def post(self, path: str, body: Any = None, *, headers: dict | None = None, **kw) -> requests.Response:
        hdrs = self.auth if headers is None else headers
        if body is not None and "data" not in kw:
            kw["json"] = body
        return requests.post(self.url + path, headers=hdrs, timeout=10, **kw)

    def get(self, path: str, *, headers: dict | None = None) -> requests.Response:
        return requests.get(self.url + path, headers=self.auth if headers is None else headers, timeout=10)


@pytest.fixture
def api(tokens: TokenStore, serve) -> Api:
    submitter, catalog = FakeSubmitter(), FakeCatalog()
    runs = {}

    def read_run(run_id: str):
        return runs.get(run_id)

    app = create_app(
        submitter=submitter, tokens=tokens, catalog=catalog, read_run=read_run,
        webserver_url="http://127.0.0.1:3000/", max_body_bytes=4096,
    )
    server = serve(app)
    _, secret = tokens.create("tester")
    a = Api(server.url, secret, submitter, catalog)
    a.runs = runs
    return a


def _error(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    return body["error"]


# --- tokens -----------------------------------------------------------------------------------


def test_token_create_list_revoke_and_what_is_stored(tokens: TokenStore) -> None:
    token_id, secret = tokens.create("ci")
    assert secret.startswith("aml_") and len(secret) > 40
    other_id, other = tokens.create("alice@laptop")
    assert [(t.id, t.name) for t in tokens.list()] == [(token_id, "ci"), (other_id, "alice@laptop")]
    assert tokens.verify(secret).name == "ci"
    assert tokens.verify(secret + "x") is None and tokens.verify("") is None

    text = tokens.path.read_text()
    assert secret not in text and other not in text  # only hashes are stored
    assert json.loads(text)["tokens"][0]["sha256"] != secret
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tokens.path.parent.stat().st_mode) == 0o700
    assert tokens.list()[0].last_used is not None  # verify() recorded it

    with pytest.raises(TokenError, match="already exists"):
        tokens.create("ci")
    for bad in ("../etc", "ci\n", ""):
        with pytest.raises(TokenError, match="not valid"):
            tokens.create(bad)
    assert tokens.revoke("ci").id == token_id  # by name
    assert tokens.verify(secret) is None
    assert tokens.revoke(other_id).name == "alice@laptop"  # by id
    with pytest.raises(TokenError, match="No token has the id or name 'ci'"):
        tokens.revoke("ci")
    assert tokens.list() == []


def test_concurrent_token_creation_loses_none(tmp_path: Path) -> None:
    def create(i: int) -> None:
        TokenStore(tmp_path / "home").create(f"t{i}")  # separate stores, as separate CLI processes

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(t.name for t in TokenStore(tmp_path / "home").list()) == sorted(f"t{i}" for i in range(12))


def test_cli_tokens_prints_the_secret_once_and_only_on_stdout(tmp_path: Path, capsys) -> None:
    import io

    ns = type("Args", (), {})
    home = tmp_path / "home"
    args = ns()
    args.action, args.name, args.home = "create", "ci", home
    out = io.StringIO()
    assert cli_tokens(args, out) == 0
    secret = out.getvalue().strip()
    assert secret.startswith("aml_") and "\n" not in secret
    assert "only this once" in capsys.readouterr().err
    args.action = "list"
    out = io.StringIO()
    cli_tokens(args, out)
    assert "ci" in out.getvalue() and secret not in out.getvalue()
    args.action, args.token = "revoke", "ci"
    out = io.StringIO()
    cli_tokens(args, out)
    assert "Revoked" in out.getvalue() and TokenStore(home).verify(secret) is None


# --- authentication ---------------------------------------------------------------------------


def test_healthz_needs_no_token_everything_else_does(api: Api) -> None:
    assert api.get("/healthz", headers={}).json() == {"status": "ok"}
    pid = api.catalog.v1.id
    for headers in ({}, {"Authorization": "Bearer aml_wrong"}, {"Authorization": f"Basic {api.secret}"},
                    {"Authorization": "Bearer"}):
        for response in (api.post(f"/api/v1/pipelines/{pid}/runs", {}, headers=headers),
                         api.get("/api/v1/pipelines", headers=headers),
                         api.get("/api/v1/no/such/path", headers=headers)):
            assert response.status_code == 401, response.text
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "tokens create" in _error(response)["message"] or "not valid" in _error(response)["message"]
    assert api.submitter.calls == []


def test_a_revoked_token_is_refused_at_once(api: Api, tokens: TokenStore) -> None:
    path = f"/api/v1/pipelines/{api.catalog.v1.id}/runs"
    assert api.post(path, {}).status_code == 202
    TokenStore(tokens.home).revoke("tester")  # as the CLI would, from another process
    refused = api.post(path, {})
    assert refused.status_code == 401 and "not valid" in _error(refused)["message"]
    assert len(api.submitter.calls) == 1


# --- POST .../runs ----------------------------------------------------------------------------


def test_post_with_azures_body_submits_a_run_with_its_tags(api: Api) -> None:
    v1 = api.catalog.v1
    response = api.post(
        f"/api/v1/pipelines/{v1.id}/runs",
        {
            "ExperimentName": "My_Pipeline",
            "ParameterAssignments": {"n_estimators": 20, "solver": "saga"},
            "DataPathAssignments": {"input_data": {"DataStoreName": "workspace", "RelativePath": "new/in.csv"}},
            "RegenerateOutputs": True,
        },
    )
    assert response.status_code == 202, response.text
    body = response.json()
    (call,) = api.submitter.calls
    assert body["Id"] == call["id"] and body["Status"] == "Queued"
    assert body["RunUrl"] == f"{api.url}/api/v1/runs/{call['id']}" == response.headers["Location"]
    assert body["DagsterRunUrl"] == f"http://127.0.0.1:3000/runs/{call['id']}"
    assert call["job"] == "train_job"
    config = call["run_config"]["resources"]["pipeline"]["config"]
    assert config["n_estimators"] == 20 and config["solver"] == "saga"
    assert config["input_data"] == {"datastore": "workspace", "path_on_datastore": "new/in.csv"}
    tags = call["tags"]
    assert tags[EXPERIMENT_TAG] == "My_Pipeline" and tags[SUBMITTED_VIA_TAG] == "http"
    assert tags[PUBLISHED_ID_TAG] == v1.id and tags[REGENERATE_TAG] == "true"


def test_defaults_an_empty_body_runs_with_the_pipelines_name_as_experiment(api: Api) -> None:
    path = f"/api/v1/pipelines/{api.catalog.v1.id}/runs"
    assert api.post(path, data=b"", headers={**api.auth}).status_code == 202
    # No Content-Type at all is accepted when the body is JSON.
    assert api.post(path, data=b'{"ParameterAssignments": {}}', headers={**api.auth}).status_code == 202
    first, second = api.submitter.calls
    assert first["run_config"] == {} and first["tags"][EXPERIMENT_TAG] == "train"
    assert REGENERATE_TAG not in first["tags"]


def test_endpoint_runs_its_default_or_a_given_version(api: Api) -> None:
    default = api.post("/api/v1/endpoints/train_ep/runs", {"ExperimentName": "e"})
    assert default.status_code == 202, default.text
    assert default.json()["Version"] == 2 and default.json()["EndpointName"] == "train_ep"
    v1 = api.post("/api/v1/endpoints/train_ep/versions/1/runs", {})
    assert v1.status_code == 202 and v1.json()["PipelineId"] == api.catalog.v1.id
    first, second = api.submitter.calls
    assert first["tags"][PUBLISHED_ID_TAG] == api.catalog.v2.id and first["tags"][ENDPOINT_TAG] == "train_ep"
    assert second["tags"][PUBLISHED_ID_TAG] == api.catalog.v1.id
    assert second["tags"][EXPERIMENT_TAG] == "train_ep"


@pytest.mark.parametrize(
    ("path", "status", "code", "names"),
    [
        ("/api/v1/pipelines/{off}/runs", 403, "PipelineDisabled", ["disabled", "version 3"]),
        ("/api/v1/endpoints/train_ep/versions/3/runs", 403, "PipelineDisabled", ["disabled"]),
        ("/api/v1/pipelines/0123abcd/runs", 404, "PipelineNotFound", ["0123abcd", "/api/v1/pipelines"]),
        ("/api/v1/pipelines/..%2F..%2Fetc/runs", 404, None, []),
        ("/api/v1/pipelines/..%0A/runs", 404, "NotFound", ["not a valid"]),
        ("/api/v1/endpoints/nope/runs", 404, "EndpointNotFound", ["nope"]),
        ("/api/v1/endpoints/train_ep/versions/9/runs", 404, "VersionNotFound", ["no version 9"]),
        ("/api/v1/endpoints/train_ep/versions/latest/runs", 404, "VersionNotFound", ["'latest'"]),
    ],
)
def test_disabled_and_unknown_pipelines(api: Api, path, status, code, names) -> None:
    response = api.post(path.format(off=api.catalog.off.id), {"ExperimentName": "e"})
    assert response.status_code == status, response.text
    error = _error(response)
    assert code is None or error["code"] == code
    for name in names:
        assert name in error["message"]
    assert api.submitter.calls == []


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"ParameterAssignments": {"n_estimatorz": 5}}, ["n_estimatorz", "n_estimators"]),
        ({"ParameterAssignments": {"n_estimators": "many"}}, ["n_estimators", "str"]),
        ({"ParameterAssignments": {"n_estimators": 0}}, ["n_estimators", "out of range"]),
        ({"ParameterAssignments": {"solver": "adam"}}, ["solver", "choices"]),
        ({"DataPathAssignments": {"input_data": {"DataStoreName": "nowhere", "RelativePath": "a.csv"}}},
         ["nowhere", "workspace"]),
        ({"DataPathAssignments": {"input_data": {"DataStoreName": "workspace", "RelativePath": "../x"}}},
         ["input_data"]),
        ({"DataPathAssignments": {"n_estimators": {"DataStoreName": "workspace", "RelativePath": "x"}}},
         ["n_estimators"]),
    ],
)
def test_invalid_parameters_get_400_naming_them_and_start_nothing(api: Api, body, names) -> None:
    response = api.post(f"/api/v1/pipelines/{api.catalog.v1.id}/runs", body)
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["code"] == "InvalidParameters" and error["details"]
    for name in names:
        assert name in error["message"], error
    assert api.submitter.calls == []


def test_every_problem_of_a_request_is_listed(api: Api) -> None:
    response = api.post(
        f"/api/v1/pipelines/{api.catalog.v1.id}/runs",
        {"ExperimentName": "bad\n", "ParameterAssignment": {}, "RegenerateOutputs": "yes",
         "DataPathAssignments": {"input_data": "workspace:x.csv"}},
    )
    assert response.status_code == 400
    error = _error(response)
    messages = [d["message"] for d in error["details"]]
    assert len(messages) == 4, messages
    assert any("Unknown field 'ParameterAssignment'" in m and "Did you mean 'ParameterAssignments'" in m
               for m in messages)
    assert any("ExperimentName" in m for m in messages)
    assert any("RegenerateOutputs must be true or false" in m for m in messages)
    assert any("DataPathAssignments['input_data']" in m for m in messages)
    assert api.submitter.calls == []


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b'{"ExperimentName": "e",', "application/json", 400, "MalformedJson"),
        (b'{"ParameterAssignments": {"n_estimators": NaN}}', "application/json", 400, "MalformedJson"),
        (b"\xff\xfe\x00", "application/json", 400, "MalformedJson"),
        (b"[1, 2]", "application/json", 400, "InvalidRequest"),
        (b'"run"', "application/json", 400, "InvalidRequest"),
        (b'{"ParameterAssignments": [1]}', "application/json", 400, "InvalidRequest"),
        (b"ExperimentName=e", "application/x-www-form-urlencoded", 415, "UnsupportedMediaType"),
        (b"{}", "text/plain", 415, "UnsupportedMediaType"),
    ],
)
def test_malformed_bodies(api: Api, data, content_type, status, code) -> None:
    response = api.post(
        f"/api/v1/pipelines/{api.catalog.v1.id}/runs", data=data,
        headers={**api.auth, "Content-Type": content_type},
    )
    assert response.status_code == status, response.text
    assert _error(response)["code"] == code
    assert api.submitter.calls == []


def test_oversize_bodies_are_refused_whether_declared_or_chunked(api: Api) -> None:
    path = f"/api/v1/pipelines/{api.catalog.v1.id}/runs"
    big = json.dumps({"ParameterAssignments": {"solver": "x" * 5000}}).encode()
    declared = api.post(path, data=big, headers={**api.auth, "Content-Type": "application/json"})
    assert declared.status_code == 413 and "4096 bytes" in _error(declared)["message"]

    def chunks():  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    chunked = api.post(path, data=chunks(), headers={**api.auth, "Content-Type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    small = api.post(path, data=iter([b'{"Experiment', b'Name": "e"}']),
                     headers={**api.auth, "Content-Type": "application/json"})
    assert small.status_code == 202, small.text  # a small chunked body is fine
    assert len(api.submitter.calls) == 1


# --- GET --------------------------------------------------------------------------------------


def test_get_runs_pipelines_and_endpoints(api: Api) -> None:
    api.runs["1b2c-run"] = {"Id": "1b2c-run", "Status": "Running", "Steps": [{"Name": "train", "Status": "Running", "Reused": False}]}
    run = api.get("/api/v1/runs/1b2c-run")
    assert run.status_code == 200 and run.json()["Status"] == "Running"
    assert run.json()["DagsterRunUrl"].endswith("/runs/1b2c-run")
    missing = api.get("/api/v1/runs/0000-none")
    assert missing.status_code == 404 and _error(missing)["code"] == "RunNotFound"

    listed = api.get("/api/v1/pipelines").json()["value"]
    assert {p["id"] for p in listed} == set(api.catalog.by_id)
    assert api.get("/api/v1/pipelines?name=other").json() == {"value": []}
    assert api.get(f"/api/v1/pipelines/{api.catalog.v2.id}").json()["version"] == 2
    assert api.get("/api/v1/pipelines/feedbeef").status_code == 404
    assert api.get("/api/v1/endpoints").json()["value"][0]["name"] == "train_ep"
    assert api.get("/api/v1/endpoints/train_ep").json()["default_version"] == 2
    assert api.get("/api/v1/endpoints/nope").status_code == 404
    wrong_method = api.get(f"/api/v1/pipelines/{api.catalog.v1.id}/runs")
    assert wrong_method.status_code == 405 and _error(wrong_method)["code"] == "MethodNotAllowed"
    assert _error(api.get("/api/v2/nothing"))["code"] == "NotFound"


def test_run_request_parsing_is_a_pure_function() -> None:
    req = RunRequest.from_json({"ExperimentName": "x", "RegenerateOutputs": False, "ParameterAssignments": None})
    assert req == RunRequest("x", {}, {}, False)
    with pytest.raises(ApiError, match="Unknown field 'Tags'"):
        RunRequest.from_json({"Tags": {}})


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


def test_no_token_reaches_the_logs(api: Api, caplog) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    api.post(f"/api/v1/pipelines/{api.catalog.v1.id}/runs", {})
    api.post(f"/api/v1/pipelines/{api.catalog.v1.id}/runs", {}, headers={"Authorization": "Bearer aml_guess"})
    assert "submitted" in caplog.text and "tester" in caplog.text
    assert api.secret not in caplog.text and "aml_guess" not in caplog.text


# --- the real parts: Submitter, published records, the instance's run queue -------------------

TINY_PROJECT = '''
from pathlib import Path

from aml_assets import (LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline,
                        PipelineParameter, PythonScriptStep)

HERE = Path(__file__).resolve().parent
RESOURCES = {"workspace": LocalDatastore(), "cpu": LocalProcessCluster()}


def build_pipeline() -> Pipeline:
    fit = PythonScriptStep(
        name="fit", script="fit.py", source_directory=HERE / "code", compute_target="cpu",
        arguments=["--n", PipelineParameter("n_estimators", 200, min=1, max=5000),
                   "--out", OutputDataset("fitted")],
    )
    return Pipeline("api_tiny", steps=[fit])


defs = build_pipeline().to_definitions(RESOURCES)
'''


def test_real_submitter_queues_a_run_of_a_published_pipeline(tmp_path, datastore, monkeypatch, serve) -> None:
    import importlib.util

    from dagster import DagsterInstance, DagsterRunStatus

    from aml_assets.pipeline.publish import PipelineEndpoint
    from aml_assets.service.instance import ensure_instance
    from aml_assets.service.submit import Submitter

    project = tmp_path / "project"
    (project / "code").mkdir(parents=True)
    (project / "definitions.py").write_text(TINY_PROJECT)
    (project / "code" / "fit.py").write_text("import sys; print(sys.argv)\n")
    home = tmp_path / "dagster_home"
    ensure_instance(home, default_config=Path(__file__).resolve().parent.parent / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    spec = importlib.util.spec_from_file_location("api_tiny_project", project / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    published = module.build_pipeline().publish("api_tiny", datastore=datastore, resources=module.RESOURCES)
    PipelineEndpoint.publish("tiny_ep", published, datastore=datastore)

    tokens = TokenStore(home)
    _, secret = tokens.create("real")
    auth = {"Authorization": f"Bearer {secret}"}
    with Submitter(project / "definitions.py") as submitter:
        server = serve(create_app(submitter=submitter, tokens=tokens, datastore=datastore))
        url = f"{server.url}/api/v1/pipelines/{published.id}/runs"
        instance: DagsterInstance = submitter.instance

        ok = requests.post(url, headers=auth, timeout=60,
                           json={"ExperimentName": "api_test", "ParameterAssignments": {"n_estimators": 20}})
        assert ok.status_code == 202, ok.text
        run_id = ok.json()["Id"]
        assert ok.json()["Status"] == "Queued"  # no daemon here: it waits in Dagster's queue
        run = instance.get_run_by_id(run_id)
        assert run.status == DagsterRunStatus.QUEUED and run.job_name == "api_tiny"
        assert run.run_config["resources"]["pipeline"]["config"] == {"n_estimators": 20}
        assert run.tags[EXPERIMENT_TAG] == "api_test" and run.tags[PUBLISHED_ID_TAG] == published.id
        assert run.tags[SUBMITTED_VIA_TAG] == "http"

        got = requests.get(f"{server.url}/api/v1/runs/{run_id}", headers=auth, timeout=30)
        assert got.status_code == 200 and got.json()["Id"] == run_id and got.json()["Status"] == "Queued"
        assert requests.get(f"{server.url}/api/v1/runs/{uuid.uuid4()}", headers=auth, timeout=30).status_code == 404
        listed = requests.get(f"{server.url}/api/v1/pipelines", headers=auth, timeout=30).json()["value"]
        assert [p["Id"] for p in listed] == [published.id]

        via_endpoint = requests.post(f"{server.url}/api/v1/endpoints/tiny_ep/versions/1/runs",
                                     headers=auth, json={}, timeout=60)
        assert via_endpoint.status_code == 202, via_endpoint.text
        assert instance.get_run_by_id(via_endpoint.json()["Id"]).tags[ENDPOINT_TAG] == "tiny_ep"

        count = len(instance.get_run_ids())
        bad = requests.post(url, headers=auth, timeout=60, json={"ParameterAssignments": {"n_estimatorz": 5}})
        assert bad.status_code == 400 and "n_estimatorz" in bad.text and "n_estimators" in bad.text
        published.disable()
        disabled = requests.post(url, headers=auth, json={}, timeout=60)
        assert disabled.status_code == 403, disabled.text
        no_token = requests.post(url, json={}, timeout=60)
        assert no_token.status_code == 401
        assert len(instance.get_run_ids()) == count  # nothing refused was created

        # The definitions change while the API runs (a new parameter) and version 2 is
        # published from them: the API loads the new code for it, no restart needed.
        (project / "definitions.py").write_text(TINY_PROJECT.replace(
            '"--out", OutputDataset("fitted")',
            '"--depth", PipelineParameter("depth", 3, min=1, max=10), "--out", OutputDataset("fitted")'))
        spec = importlib.util.spec_from_file_location("api_tiny_project_v2", project / "definitions.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        v2 = module.build_pipeline().publish("api_tiny", datastore=datastore, resources=module.RESOURCES)
        assert v2.version == 2
        newer = requests.post(f"{server.url}/api/v1/pipelines/{v2.id}/runs", headers=auth, timeout=60,
                              json={"ParameterAssignments": {"depth": 7}})
        assert newer.status_code == 202, newer.text
        run = instance.get_run_by_id(newer.json()["Id"])
        assert run.run_config["resources"]["pipeline"]["config"] == {"depth": 7}
        server.stop()
