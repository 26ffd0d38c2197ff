"""A real ``dagster-webserver`` and headless Chromium for tests (no mocks).

Usage::

    server = DagsterWebserver(REPO / "workspace.yaml", home=tmp / "home", env={...})
    server.start()                      # raises WebserverStartError (with its stderr) on failure
    try:
        data = server.graphql("{ assetNodes { assetKey { path } } }")
    finally:
        server.stop()

The webserver runs in its own process group, so ``stop`` also ends the code server, run
workers and Spark JVMs it started (the code server outlives a bare SIGTERM to the webserver
until its heartbeat times out).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from aml_assets.compute.processes import stop_group

# Instance settings of the test DAGSTER_HOME: runs launched over GraphQL start at once (no
# dagster-daemon); no telemetry; no "Join the Dagster community" dialog over the UI.
INSTANCE_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
nux:
  enabled: false
"""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_INSTALL_COMMAND = "apt-get update && apt-get install -y chromium"
TERMINAL_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})


class WebserverStartError(RuntimeError):
    """dagster-webserver exited, or did not answer /server_info in time."""


class GraphQLError(RuntimeError):
    """The GraphQL response had top-level errors."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no output>"


class DagsterWebserver:
    """``dagster-webserver -w WORKSPACE -h 127.0.0.1 -p PORT`` with its own DAGSTER_HOME."""

    def __init__(
        self,
        workspace: Path,
        home: Path,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        binary: Path | None = None,
    ) -> None:
        self.workspace = Path(workspace).resolve()
        self.cwd = self.workspace.parent
        self.home = Path(home).resolve()
        self.host = host
        self.port = 0
        self.env = dict(env or {})
        self.binary = (
            binary or Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dagster-webserver"
        )
        self.proc: subprocess.Popen | None = None
        self.stdout_path = self.home / "webserver.stdout.log"
        self.stderr_path = self.home / "webserver.stderr.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- process ----------------------------------------------------------------------------
    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start and wait for ``/server_info``; retries on another free port if it exits early
        (the port picked may be taken by someone else before the server binds it)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(INSTANCE_YAML)
        if not self.binary.exists():
            found = shutil.which("dagster-webserver")
            if not found:
                raise WebserverStartError(f"dagster-webserver not found ({self.binary})")
            self.binary = Path(found)
        last_error = ""
        for _ in range(attempts):
            self.port = free_port(self.host)
            env = {**os.environ, **self.env, "DAGSTER_HOME": str(self.home)}
            with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
                try:
                    self.proc = subprocess.Popen(
                        [
                            str(self.binary),
                            "-w",
                            str(self.workspace),
                            "-h",
                            self.host,
                            "-p",
                            str(self.port),
                        ],
                        cwd=self.cwd,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                    )
                except OSError as exc:
                    raise WebserverStartError(f"cannot start {self.binary}: {exc}") from exc
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self._server_info() is not None:
                    return
                time.sleep(0.5)
            code = self.proc.poll()
            self.stop()
            last_error = (
                f"dagster-webserver on port {self.port} "
                + (
                    f"exited with code {code}"
                    if code is not None
                    else f"did not answer /server_info within {timeout:.0f}s"
                )
                + f"\n--- stderr ---\n{_tail(self.stderr_path)}\n--- stdout ---\n{_tail(self.stdout_path, 2000)}"
            )
            if "address already in use" not in _tail(self.stderr_path).lower():
                break  # only a lost race for the port is worth another try
        raise WebserverStartError(last_error)

    def _server_info(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as resp:
                info = json.load(resp)
        except (OSError, ValueError):
            return None
        # Someone else could hold the port: only the webserver answers with its version.
        return info if isinstance(info, dict) and "dagster_webserver_version" in info else None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left of it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, timeout)

    def stderr(self) -> str:
        return _tail(self.stderr_path)

    # --- GraphQL ----------------------------------------------------------------------------
    def graphql(
        self, query: str, variables: dict[str, Any] | None = None, timeout: float = 60.0
    ) -> dict:
        """POST /graphql; the ``data`` of the answer, raising GraphQLError on ``errors``."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise GraphQLError(f"HTTP {exc.code}: {exc.read()[:4000]!r}") from exc
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"], indent=1)[:4000])
        return answer["data"]


# --- headless Chromium ----------------------------------------------------------------------
def chromium_args(user_data_dir: Path, budget_ms: int = 15000) -> list[str]:
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data_dir}",
        "--window-size=1600,1000",
        f"--virtual-time-budget={budget_ms}",
    ]


def chromium_screenshot(url: str, png: Path, user_data_dir: Path, timeout: float = 120.0) -> None:
    """Render ``url`` (JS included) and save a 1600x1000 PNG."""
    result = subprocess.run(
        [*chromium_args(user_data_dir), f"--screenshot={png}", url],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0 or not png.exists():
        raise RuntimeError(
            f"chromium --screenshot failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )


def chromium_dom(url: str, user_data_dir: Path, timeout: float = 120.0) -> str:
    """The DOM of ``url`` after the app rendered (``--dump-dom``)."""
    result = subprocess.run(
        [*chromium_args(user_data_dir), "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"chromium --dump-dom failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result.stdout


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style", "noscript"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def visible_text(dom: str) -> list[str]:
    """The text nodes of a DOM, without scripts and styles (what a user can read)."""
    parser = _Text()
    parser.feed(dom)
    return parser.parts


def png_size(png: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; raises if the file is not a PNG."""
    head = png.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{png} is not a PNG")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def png_pixel_bytes(png: Path) -> bytes:
    """The decompressed image data of a PNG (its IDAT chunks), to tell a blank page from content."""
    data = png.read_bytes()
    pos, idat = 8, []
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return zlib.decompress(b"".join(idat))


class _GraphNodes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[tuple[float, float, str]] = []
        self._pos: tuple[float, float] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "foreignobject":
            a = dict(attrs)
            self._pos = (float(a.get("x") or 0), float(a.get("y") or 0))

    def handle_endtag(self, tag: str) -> None:
        if tag == "foreignobject":
            self._pos = None

    def handle_data(self, data: str) -> None:
        if self._pos is not None and data.strip():
            self.nodes.append((*self._pos, data.strip()))
            self._pos = None


def graph_nodes(dom: str) -> dict[str, tuple[float, float]]:
    """Rendered asset-graph nodes: the first text of each SVG ``<foreignObject>`` (the asset
    name) -> its (x, y) in the graph."""
    parser = _GraphNodes()
    parser.feed(dom)
    return {name: (x, y) for x, y, name in parser.nodes}
