"""The HTTP API of published pipelines: Azure ML's REST calls to start and follow runs.

An Azure ML client keeps working against it::

    response = requests.post(
        f"{api}/api/v1/pipelines/{published_id}/runs",
        headers={"Authorization": f"Bearer {token}"},
        json={"ExperimentName": "My_Pipeline", "ParameterAssignments": {"pipeline_arg": 20}},
    )
    run_id = response.json()["Id"]

Routes (all but ``/healthz`` need ``Authorization: Bearer <token>``; see ``service/tokens.py``):

- ``POST /api/v1/pipelines/{id}/runs``: run a published pipeline version;
- ``POST /api/v1/endpoints/{name}/runs``: run a pipeline endpoint's default version;
- ``POST /api/v1/endpoints/{name}/versions/{version}/runs``: run one version of an endpoint;
- ``GET /api/v1/runs/{run_id}``: a run's status (Azure's words) and its steps;
- ``GET /api/v1/pipelines[?name=...]``, ``GET /api/v1/pipelines/{id}``,
  ``GET /api/v1/endpoints``, ``GET /api/v1/endpoints/{name}``;
- ``GET /healthz``: the server is up (no token needed).

The body of a POST is Azure's: ``ExperimentName`` (optional here: it defaults to the name of the
pipeline or endpoint posted to; Azure requires it), ``ParameterAssignments`` ``{name: value}``,
``DataPathAssignments`` ``{name: {"DataStoreName": ..., "RelativePath": ...}}``, and our own
``RegenerateOutputs`` (true: run every step even when its outputs could be reused). A missing
``Content-Type`` is accepted (the body must still be JSON); any other type than JSON gets 415.
An empty body runs the pipeline with its defaults.

Every refusal is ``{"error": {"code", "message", "details": [{"code", "message"}]}}`` naming the
problem, and a refused request starts nothing: the body is read (within ``max_body_bytes``, however
it is sent), parsed and every parameter checked before a run is created. Runs are created on the
Dagster instance through ``Submitter``: ordinary Dagster runs, queued for the daemon.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aml_assets.errors import AmlAssetsError
from aml_assets.pipeline.publish import PipelineEndpoint, PublishedPipeline, PublishError
from aml_assets.pipeline.tags import ENDPOINT_TAG
from aml_assets.service.experiment import PipelineRun, RunNotFoundError, azure_status
from aml_assets.service.submit import SubmitError, Submitter, submit_pipeline_run
from aml_assets.service.tokens import TokenError, TokenStore

if TYPE_CHECKING:
    from aml_assets.data.datastore import Datastore

_log = logging.getLogger(__name__)

API = "/api/v1"
DEFAULT_MAX_BODY_BYTES = 1_048_576
#: Experiment names, as ``Experiment`` accepts them (the name becomes the ``aml/experiment`` tag).
_EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
#: Published ids, endpoint names and run ids in a URL: no path tricks reach the datastore.
_URL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class ApiError(Exception):
    """A refused request: the status, a short code and a message naming the problem and fix."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = list(details or [])
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.details, self.headers)


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Azure's error shape: ``{"error": {"code", "message", "details": [{"code", "message"}]}}``."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": [{"code": code, "message": d} for d in details or []],
        }
    }
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _problems_error(problems: list[str], code: str = "InvalidRequest") -> ApiError:
    message = (
        problems[0] if len(problems) == 1
        else f"The request has {len(problems)} problems: " + " ".join(problems)
    )
    return ApiError(400, code, message, problems)


# --- the body of a POST .../runs ------------------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    """Azure's run submission body, checked for shape (the parameters are checked on submit)."""

    experiment: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    datapaths: dict[str, Any] = field(default_factory=dict)
    regenerate: bool = False

    FIELDS = ("ExperimentName", "ParameterAssignments", "DataPathAssignments", "RegenerateOutputs")

    @classmethod
    def from_json(cls, body: Any) -> RunRequest:
        """The request in ``body`` (decoded JSON); ApiError 400 listing every problem."""
        if not isinstance(body, dict):
            raise _problems_error(
                [
                    f"The body must be a JSON object such as {{\"ExperimentName\": \"my_experiment\", "
                    f"\"ParameterAssignments\": {{\"name\": 1}}}}, not {_json_kind(body)}."
                ]
            )
        problems = [_unknown_field(key) for key in body if key not in cls.FIELDS]
        experiment = body.get("ExperimentName")
        if experiment is not None and not (
            isinstance(experiment, str) and _EXPERIMENT_NAME.fullmatch(experiment)
        ):
            problems.append(
                f"ExperimentName {experiment!r} is not valid: give a string of 1 to 255 letters, "
                "digits, '_', '.' or '-', starting with a letter or digit (or leave it out to use "
                "the pipeline's name)."
            )
        parameters = body.get("ParameterAssignments")
        if parameters is not None and not isinstance(parameters, dict):
            problems.append(
                f"ParameterAssignments must be an object of parameter names to values, such as "
                f"{{\"n_estimators\": 200}}, not {_json_kind(parameters)}."
            )
        datapaths = body.get("DataPathAssignments")
        if datapaths is not None and not isinstance(datapaths, dict):
            problems.append(
                "DataPathAssignments must be an object of DataPath parameter names to "
                "{\"DataStoreName\": ..., \"RelativePath\": ...} objects, not "
                f"{_json_kind(datapaths)}."
            )
        elif datapaths:
            for name, value in datapaths.items():
                if not isinstance(value, dict):
                    problems.append(
                        f"DataPathAssignments['{name}'] must be an object such as "
                        "{\"DataStoreName\": \"workspace\", \"RelativePath\": \"data/in.csv\"}, "
                        f"not {_json_kind(value)}."
                    )
        regenerate = body.get("RegenerateOutputs")
        if regenerate is not None and not isinstance(regenerate, bool):
            problems.append(
                f"RegenerateOutputs must be true or false, not {_json_kind(regenerate)}."
            )
        if problems:
            raise _problems_error(problems)
        return cls(experiment, dict(parameters or {}), dict(datapaths or {}), bool(regenerate))


def _unknown_field(key: str) -> str:
    accepted = ", ".join(RunRequest.FIELDS)
    lower = {f.lower(): f for f in RunRequest.FIELDS}
    close = difflib.get_close_matches(key.lower(), list(lower), n=1, cutoff=0.7)
    hint = f" Did you mean '{lower[close[0]]}'?" if close else ""
    return f"Unknown field '{key}' in the body (accepted: {accepted}).{hint}"


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return f"{kinds.get(type(value), type(value).__name__)} ({json.dumps(value)[:60]})"


# --- where published pipelines and runs come from --------------------------------------------


class Catalog(Protocol):
    """The published pipelines and endpoints the API serves (``None``: there is no such one)."""

    def pipeline(self, published_id: str) -> PublishedPipeline | None: ...

    def pipelines(self, name: str | None = None) -> list[PublishedPipeline]: ...

    def endpoint(self, name: str) -> PipelineEndpoint | None: ...

    def endpoints(self) -> list[PipelineEndpoint]: ...


class DatastoreCatalog:
    """The published pipelines and endpoints recorded on a datastore (the workspace's by default)."""

    def __init__(self, datastore: Datastore | None = None):
        self.datastore = datastore

    def pipeline(self, published_id: str) -> PublishedPipeline | None:
        return _none_if_missing(lambda: PublishedPipeline.get(published_id, datastore=self.datastore))

    def pipelines(self, name: str | None = None) -> list[PublishedPipeline]:
        return PublishedPipeline.list(datastore=self.datastore, name=name)

    def endpoint(self, name: str) -> PipelineEndpoint | None:
        return _none_if_missing(lambda: PipelineEndpoint.get(name, datastore=self.datastore))

    def endpoints(self) -> list[PipelineEndpoint]:
        return PipelineEndpoint.list(datastore=self.datastore)


def _none_if_missing(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except PublishError as exc:
        if not exc.not_found:  # a damaged record, an unreachable datastore: the server's problem
            raise
        return None


def instance_run_reader(submitter: Submitter) -> Callable[[str], dict[str, Any] | None]:
    """Reads a run of the submitter's instance as ``PipelineRun.to_json()``; None if unknown."""
    def read(run_id: str) -> dict[str, Any] | None:
        try:
            return PipelineRun(run_id, instance=submitter.instance).to_json()
        except RunNotFoundError:
            return None

    return read


# --- the application --------------------------------------------------------------------------


class _Api:
    """The route handlers, over injected parts (tests give fakes, ``serve`` the real ones)."""

    def __init__(
        self,
        submitter: Any,
        catalog: Catalog,
        read_run: Callable[[str], dict[str, Any] | None],
        base_url: str | None,
        webserver_url: str | None,
        max_body_bytes: int,
    ):
        self.submitter, self.catalog, self.read_run = submitter, catalog, read_run
        self.base_url = base_url.rstrip("/") if base_url else None
        self.webserver_url = webserver_url.rstrip("/") if webserver_url else None
        self.max_body_bytes = max_body_bytes

    # --- POST .../runs -----------------------------------------------------------------------
    async def run_pipeline(self, request: Request) -> JSONResponse:
        published_id = _url_name(request, "published_id", "published pipeline id")
        run_request = RunRequest.from_json(await self._read_json(request))
        return await self._submit(request, run_request, lambda: (None, self._published(published_id)))

    async def run_endpoint(self, request: Request) -> JSONResponse:
        name = _url_name(request, "name", "endpoint name")
        version = request.path_params.get("version")
        run_request = RunRequest.from_json(await self._read_json(request))
        return await self._submit(request, run_request, lambda: self._endpoint_version(name, version))

    async def _submit(
        self, request: Request, run_request: RunRequest, lookup: Callable[[], tuple[Any, Any]]
    ) -> JSONResponse:
        # Everything that reads the datastore or the instance runs in the threadpool.
        run_id, status, about = await run_in_threadpool(self._submit_blocking, run_request, lookup)
        _log.info(
            "run %s of '%s' version %s submitted (experiment '%s', token '%s')",
            run_id, about["PipelineName"], about["Version"], about["ExperimentName"],
            request.scope.get("state", {}).get("token_name", "?"),
        )
        run_url = f"{self._base(request)}{API}/runs/{run_id}"
        body = {
            "Id": run_id,
            "Status": status,
            "RunUrl": run_url,
            "DagsterRunUrl": self._dagster_url(run_id),
            **about,
        }
        return JSONResponse(body, status_code=202, headers={"Location": run_url})

    def _submit_blocking(
        self, run_request: RunRequest, lookup: Callable[[], tuple[Any, Any]]
    ) -> tuple[str, str, dict[str, Any]]:
        """(run id, its status, what was run) after checking the pipeline and the request."""
        endpoint, published = lookup()
        if published.status != "Active":
            raise ApiError(
                403,
                "PipelineDisabled",
                f"Published pipeline '{published.name}' version {published.version} "
                f"(id {published.id}) is disabled and starts no runs; enable it "
                "(PublishedPipeline.enable()) or submit to another version.",
            )
        experiment = run_request.experiment or (endpoint.name if endpoint else published.name)
        self.submitter.refresh_if_older_than(_timestamp(getattr(published, "created", None)))
        tags = dict(published.run_tags())
        if endpoint is not None:
            tags[ENDPOINT_TAG] = endpoint.name
        try:
            run_id = submit_pipeline_run(
                self.submitter,
                job=published.pipeline_name,
                parameters=published.parameter_objects(),
                values=run_request.parameters,
                datapaths=run_request.datapaths or None,
                regenerate=run_request.regenerate,
                experiment=experiment,
                tags=tags,
                via="http",
                datastores=list(published.datastores) or None,
            )
        except SubmitError as exc:
            problems = exc.problems or [str(exc)]
            if exc.status_code == 400:
                raise _problems_error(problems, code="InvalidParameters") from exc
            # 404: the published pipeline's job is not in this server's workspace (or its code
            # location failed to load): the server's setup, not the request, needs fixing.
            code = "JobNotFound" if exc.status_code == 404 else "SubmitFailed"
            raise ApiError(exc.status_code, code, str(exc), problems) from exc
        about = {
            "ExperimentName": experiment,
            "PipelineId": published.id,
            "PipelineName": published.name,
            "Version": published.version,
        }
        if endpoint is not None:
            about["EndpointName"] = endpoint.name
        return run_id, self._status(run_id), about

    def _status(self, run_id: str) -> str:
        """The new run's status in Azure's words (Queued while it waits for the daemon)."""
        run = self.submitter.instance.get_run_by_id(run_id)
        return azure_status(run.status) if run is not None else "NotStarted"

    # --- GET -------------------------------------------------------------------------------------
    async def get_run(self, request: Request) -> JSONResponse:
        run_id = request.path_params["run_id"]
        data = None
        if _URL_NAME.fullmatch(run_id):
            data = await run_in_threadpool(self.read_run, run_id)
        if data is None:
            raise ApiError(
                404, "RunNotFound",
                f"There is no run with id '{run_id}' on this server's Dagster instance; use the Id "
                "a POST .../runs answered with.",
            )
        data = dict(data)
        data.setdefault("RunUrl", f"{self._base(request)}{API}/runs/{run_id}")
        data.setdefault("DagsterRunUrl", self._dagster_url(run_id))
        return JSONResponse(data)

    async def list_pipelines(self, request: Request) -> JSONResponse:
        name = request.query_params.get("name") or None
        found = await run_in_threadpool(lambda: [p.to_json() for p in self.catalog.pipelines(name)])
        return JSONResponse({"value": found})

    async def get_pipeline(self, request: Request) -> JSONResponse:
        published_id = _url_name(request, "published_id", "published pipeline id")
        return JSONResponse(await run_in_threadpool(lambda: self._published(published_id).to_json()))

    async def list_endpoints(self, request: Request) -> JSONResponse:
        found = await run_in_threadpool(lambda: [e.to_json() for e in self.catalog.endpoints()])
        return JSONResponse({"value": found})

    async def get_endpoint(self, request: Request) -> JSONResponse:
        name = _url_name(request, "name", "endpoint name")
        return JSONResponse(await run_in_threadpool(lambda: self._endpoint(name).to_json()))

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    # --- lookups (in the threadpool: they read the datastore) -------------------------------------
    def _published(self, published_id: str) -> Any:
        published = self.catalog.pipeline(published_id)
        if published is None:
            raise ApiError(
                404, "PipelineNotFound",
                f"No published pipeline has the id '{published_id}'; GET {API}/pipelines lists them.",
            )
        return published

    def _endpoint(self, name: str) -> Any:
        endpoint = self.catalog.endpoint(name)
        if endpoint is None:
            raise ApiError(
                404, "EndpointNotFound",
                f"There is no pipeline endpoint named '{name}'; GET {API}/endpoints lists them.",
            )
        return endpoint

    def _endpoint_version(self, name: str, version: str | None) -> tuple[Any, Any]:
        endpoint = self._endpoint(name)
        number = None
        if version is not None:
            if not re.fullmatch(r"[0-9]{1,9}", version) or int(version) < 1:
                raise ApiError(
                    404, "VersionNotFound",
                    f"'{version}' is not a version of endpoint '{name}': versions are numbers "
                    f"(1, 2, ...); GET {API}/endpoints/{name} lists them.",
                )
            number = int(version)
        try:
            published = endpoint.get_pipeline(number)
        except AmlAssetsError as exc:
            if not getattr(exc, "not_found", False):
                raise
            raise ApiError(
                404, "VersionNotFound", f"{exc} GET {API}/endpoints/{name} lists its versions."
            ) from None
        return endpoint, published

    # --- the body ------------------------------------------------------------------------------
    async def _read_json(self, request: Request) -> Any:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json"):
            raise ApiError(
                415, "UnsupportedMediaType",
                f"The body must be JSON sent with 'Content-Type: application/json', not '{media}' "
                "(curl: -H 'Content-Type: application/json').",
            )
        body = await self._read_body(request)
        if not body.strip():
            return {}
        try:
            return json.loads(body, parse_constant=_refuse_constant)
        except ValueError as exc:  # JSONDecodeError, bad UTF-8, NaN/Infinity
            where = (
                f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            )
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise ApiError(400, "MalformedJson", f"The body is not valid JSON: {reason}{where}.") from None
        except RecursionError:
            raise ApiError(400, "MalformedJson", "The body is not valid JSON: it nests too deeply.") from None

    async def _read_body(self, request: Request) -> bytes:
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "InvalidContentLength", f"Content-Length '{declared}' is not a number.")
            if int(declared) > limit:
                raise _too_large(limit)
        # Count what actually arrives too: a chunked body has no Content-Length to check.
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
        return bytes(body)

    # --- URLs ----------------------------------------------------------------------------------
    def _base(self, request: Request) -> str:
        return self.base_url or str(request.base_url).rstrip("/")

    def _dagster_url(self, run_id: str) -> str | None:
        return f"{self.webserver_url}/runs/{run_id}" if self.webserver_url else None


def _timestamp(iso: str | None) -> float:
    """A record's ISO time as a Unix timestamp (0 when missing or unreadable)."""
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return 0.0


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "RequestTooLarge",
        f"The body is larger than this server accepts ({limit} bytes); parameter values belong "
        "in the body, data on a datastore (pass its path in DataPathAssignments).",
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _url_name(request: Request, key: str, what: str) -> str:
    value = request.path_params[key]
    if not _URL_NAME.fullmatch(value):
        raise ApiError(404, "NotFound", f"'{value}' is not a valid {what}.")
    return value


class BearerAuth:
    """ASGI middleware: every path but the open ones needs ``Authorization: Bearer <token>``.

    It runs before routing, so no handler can forget it, and an unknown path says 401 to a
    caller without a token instead of telling it which paths exist.
    """

    def __init__(self, app: ASGIApp, tokens: TokenStore, open_paths: frozenset[str] = frozenset({"/healthz"})):
        self.app, self.tokens, self.open_paths = app, tokens, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        secret = _bearer(scope)
        try:
            info = await run_in_threadpool(self.tokens.verify, secret) if secret else None
        except TokenError as exc:
            _log.error("cannot check API tokens: %s", exc)
            response = error_response(
                500, "TokenStoreUnavailable", "The server cannot check tokens now; see its log."
            )
            await response(scope, receive, send)
            return
        if info is None:
            if secret:
                message = "The bearer token is not valid (revoked, or never created here)."
                challenge = 'Bearer realm="aml-assets", error="invalid_token"'
            else:
                message = (
                    "This API needs a token: send 'Authorization: Bearer <token>' "
                    "(create one with: aml-assets tokens create NAME)."
                )
                challenge = 'Bearer realm="aml-assets"'
            response = error_response(401, "Unauthorized", message, headers={"WWW-Authenticate": challenge})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["token_name"] = info.name
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, "NotFound", f"There is no {request.url.path}; the API is under {API}.")
    if exc.status_code == 405:
        return error_response(
            405, "MethodNotAllowed", f"{request.method} is not allowed on {request.url.path}.",
            headers=exc.headers,
        )
    return error_response(exc.status_code, "HttpError", str(exc.detail), headers=exc.headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    _log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    if isinstance(exc, AmlAssetsError):
        return error_response(500, "ServerError", str(exc))
    return error_response(500, "ServerError", f"The server failed: {type(exc).__name__}; see its log.")


def create_app(
    *,
    submitter: Any,
    tokens: TokenStore,
    datastore: Datastore | None = None,
    base_url: str | None = None,
    webserver_url: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    catalog: Catalog | None = None,
    read_run: Callable[[str], dict[str, Any] | None] | None = None,
) -> Starlette:
    """The API as an ASGI app.

    ``submitter`` creates the runs (a ``Submitter``); ``tokens`` checks bearer tokens; published
    pipelines and endpoints come from ``catalog`` (default: the records on ``datastore``, the
    workspace datastore when None) and runs from ``read_run`` (default: the submitter's
    instance). ``base_url`` is the API's public URL when it sits behind a proxy (default: the
    request's); ``webserver_url`` the Dagster UI's, for ``DagsterRunUrl``.
    """
    api = _Api(
        submitter,
        catalog or DatastoreCatalog(datastore),
        read_run or instance_run_reader(submitter),
        base_url,
        webserver_url,
        max_body_bytes,
    )
    routes = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route(f"{API}/pipelines", api.list_pipelines, methods=["GET"]),
        Route(f"{API}/pipelines/{{published_id}}", api.get_pipeline, methods=["GET"]),
        Route(f"{API}/pipelines/{{published_id}}/runs", api.run_pipeline, methods=["POST"]),
        Route(f"{API}/endpoints", api.list_endpoints, methods=["GET"]),
        Route(f"{API}/endpoints/{{name}}", api.get_endpoint, methods=["GET"]),
        Route(f"{API}/endpoints/{{name}}/runs", api.run_endpoint, methods=["POST"]),
        Route(f"{API}/endpoints/{{name}}/versions/{{version}}/runs", api.run_endpoint, methods=["POST"]),
        Route(f"{API}/runs/{{run_id}}", api.get_run, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, ApiError: _api_error, Exception: _server_error},
    )
    app.add_middleware(BearerAuth, tokens=tokens)
    return app


# --- aml-assets serve ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    host: str = "127.0.0.1",
    port: int = 8787,
    workspace: str | Path = "workspace.yaml",
    *,
    datastore: Datastore | None = None,
    base_url: str | None = None,
    webserver_url: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the API with uvicorn until interrupted; on loopback unless ``host`` says otherwise.

    Runs are created on ``$DAGSTER_HOME``'s instance, and the tokens of that home are accepted.
    ``workspace`` is the project's ``workspace.yaml`` (or its definitions ``.py`` file).
    """
    import uvicorn

    home = Path(os.environ.get("DAGSTER_HOME") or "")
    if not str(home) or not home.is_dir():
        raise AmlAssetsError(
            f"The API needs a Dagster home (DAGSTER_HOME='{os.environ.get('DAGSTER_HOME', '')}'): "
            "set DAGSTER_HOME to the instance the runs go to (the Makefile uses ./.dagster_home)."
        )
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise AmlAssetsError("Give both ssl_certfile and ssl_keyfile (--ssl-certfile, --ssl-keyfile), or neither.")
    ours = logging.getLogger("aml_assets")
    if not ours.handlers:  # uvicorn configures its own loggers only; show ours like its lines
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
    tokens = TokenStore(home)
    if not is_loopback(host) and not ssl_certfile:
        _log.warning(
            "Serving on %s, reachable from other machines, without TLS: bearer tokens travel in "
            "clear text. Give a certificate (--ssl-certfile/--ssl-keyfile) or put a TLS proxy "
            "in front.", host,
        )
    if not tokens.list():
        _log.warning(
            "There are no API tokens in %s: every request will get 401. Create one with: "
            "aml-assets tokens create NAME", tokens.path,
        )
    with Submitter(workspace) as submitter:
        if submitter.queues_runs() and not submitter.daemon_running():
            _log.warning(
                "No dagster-daemon is running for %s: runs submitted here wait in the queue until "
                "one starts (aml-assets up starts one; or run dagster-daemon run).", home,
            )
        app = create_app(
            submitter=submitter, tokens=tokens, datastore=datastore, base_url=base_url,
            webserver_url=webserver_url, max_body_bytes=max_body_bytes,
        )
        uvicorn.run(
            app, host=host, port=port, log_level=log_level, server_header=False,
            ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        )


def cli_serve(args: Any, out: Any = None) -> int:
    """``aml-assets serve``: the HTTP API on ``$DAGSTER_HOME``'s instance."""
    serve(
        host=args.host,
        port=args.port,
        workspace=args.workspace,
        base_url=getattr(args, "base_url", None),
        webserver_url=getattr(args, "webserver_url", None),
        max_body_bytes=getattr(args, "max_body_bytes", None) or DEFAULT_MAX_BODY_BYTES,
        ssl_certfile=getattr(args, "ssl_certfile", None),
        ssl_keyfile=getattr(args, "ssl_keyfile", None),
        log_level=getattr(args, "log_level", None) or "info",
    )
    return 0

