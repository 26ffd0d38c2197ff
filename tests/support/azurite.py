"""A real Azurite blob emulator for tests (no mocks).

Usage::

    with AzuriteServer() as az:
        az.create_container("data")
        fs = az.filesystem()          # adlfs.AzureBlobFileSystem
        fs.pipe_file("data/x.bin", b"hello")

Azurite is installed from the npm registry, pinned in ``tools/azurite/package.json``::

    npm ci --prefix tools/azurite

Only the blob service is started (``azurite-blob``), on a free port on 127.0.0.1, with its
workspace in a fresh temporary folder that is deleted on exit.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

INSTALL_COMMAND = "npm ci --prefix tools/azurite"

# The well-known Azurite / Azure Storage Emulator development account (public, documented).
DEV_ACCOUNT_NAME = "devstoreaccount1"
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_DIR = REPO_ROOT / "tools" / "azurite"


class AzuriteNotInstalled(RuntimeError):
    """The pinned azurite npm package has not been installed."""


class AzuriteStartError(RuntimeError):
    """azurite-blob did not start listening in time (or exited)."""


def azurite_blob_binary() -> Path:
    """Path of ``tools/azurite/node_modules/.bin/azurite-blob``; raise if not installed."""
    name = "azurite-blob.cmd" if os.name == "nt" else "azurite-blob"
    binary = AZURITE_DIR / "node_modules" / ".bin" / name
    if not binary.exists():
        raise AzuriteNotInstalled(
            f"Azurite is not installed: {binary} does not exist. "
            f"Install it from the repository root with: {INSTALL_COMMAND}"
        )
    return binary


def azurite_available() -> bool:
    try:
        azurite_blob_binary()
    except AzuriteNotInstalled:
        return False
    return shutil.which("node") is not None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _azurite_answers(host: str, port: int) -> bool:
    """True once an HTTP request to host:port is answered by Azurite (its Server header).

    A bare TCP connect is not enough: another process could hold the port we picked."""
    conn = http.client.HTTPConnection(host, port, timeout=1)
    try:
        conn.request("GET", f"/{DEV_ACCOUNT_NAME}?comp=list")
        response = conn.getresponse()
        response.read()
        return response.getheader("Server", "").startswith("Azurite-Blob")
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class AzuriteServer:
    """Start/stop a real ``azurite-blob`` process. Usable as a context manager."""

    host = "127.0.0.1"
    account_name = DEV_ACCOUNT_NAME
    account_key = DEV_ACCOUNT_KEY

    def __init__(self, *, startup_timeout: float = 30.0, in_memory: bool = False) -> None:
        self.startup_timeout = startup_timeout
        self.in_memory = in_memory
        self.port: int | None = None
        self.location: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._stdout_path: Path | None = None
        self._stderr_path: Path | None = None

    # ---------------------------------------------------------------- addresses
    @property
    def blob_endpoint(self) -> str:
        self._require_started()
        return f"http://{self.host}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={self.account_name};"
            f"AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def storage_options(self) -> dict[str, Any]:
        """kwargs for ``adlfs.AzureBlobFileSystem`` / pandas ``storage_options`` (``az://`` URLs)."""
        return {
            "account_name": self.account_name,
            "account_key": self.account_key,
            "connection_string": self.connection_string,
        }

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> AzuriteServer:
        if self.process is not None:
            return self
        binary = azurite_blob_binary()
        if shutil.which("node") is None:
            raise AzuriteNotInstalled("`node` is not on PATH; Azurite needs Node.js >= 18.")
        self.location = Path(tempfile.mkdtemp(prefix="azurite-"))
        logs = self.location / "_logs"
        logs.mkdir()
        self._stdout_path = logs / "stdout.log"
        self._stderr_path = logs / "stderr.log"
        data = self.location / "data"
        data.mkdir()

        # The port is picked then released; a rare race with another process is retried.
        last_error: Exception | None = None
        for _attempt in range(3):
            self.port = free_port(self.host)
            cmd = [
                str(binary),
                "--blobHost",
                self.host,
                "--blobPort",
                str(self.port),
                "--location",
                str(data),
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--silent",
            ]
            if self.in_memory:
                cmd.append("--inMemoryPersistence")
            t0 = time.monotonic()
            with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
                self.process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=str(data),
                    start_new_session=True,
                )
            try:
                self._wait_until_listening(t0)
                self.startup_seconds = time.monotonic() - t0
                return self
            except AzuriteStartError as exc:
                last_error = exc
                self._stop_process()
                if "EADDRINUSE" not in str(exc):
                    break
        self._cleanup_location()
        assert last_error is not None
        raise last_error

    def _wait_until_listening(self, t0: float) -> None:
        assert self.process is not None and self.port is not None
        deadline = t0 + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AzuriteStartError(
                    f"azurite-blob exited with code {self.process.returncode} before listening "
                    f"on {self.host}:{self.port}.\n{self._logs()}"
                )
            if _azurite_answers(self.host, self.port):
                if self.process.poll() is None:
                    return
                continue  # someone else answers on this port; report our exit above
            time.sleep(0.05)
        raise AzuriteStartError(
            f"azurite-blob did not accept connections on {self.host}:{self.port} within "
            f"{self.startup_timeout:.0f}s.\n{self._logs()}"
        )

    def _logs(self) -> str:
        parts = []
        for label, path in (("stderr", self._stderr_path), ("stdout", self._stdout_path)):
            try:
                text = path.read_text(errors="replace") if path else ""
            except OSError:
                text = ""
            parts.append(f"--- azurite {label} ---\n{text.strip() or '(empty)'}")
        return "\n".join(parts)

    def _stop_process(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _cleanup_location(self) -> None:
        if self.location is not None:
            shutil.rmtree(self.location, ignore_errors=True)
            self.location = None

    def stop(self) -> None:
        self._stop_process()
        self._cleanup_location()

    def __enter__(self) -> AzuriteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _require_started(self) -> None:
        if self.port is None:
            raise RuntimeError("AzuriteServer is not started; use `with AzuriteServer() as az:`")

    # ---------------------------------------------------------------- helpers
    def blob_service_client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def create_container(self, name: str, *, exist_ok: bool = True) -> None:
        from azure.core.exceptions import ResourceExistsError

        with self.blob_service_client() as client:
            try:
                client.create_container(name)
            except ResourceExistsError:
                if not exist_ok:
                    raise

    def filesystem(self, **kwargs: Any):
        """A fresh (non-cached instance) ``adlfs.AzureBlobFileSystem`` bound to this server."""
        from adlfs import AzureBlobFileSystem

        options = {**self.storage_options(), "skip_instance_cache": True, **kwargs}
        return AzureBlobFileSystem(**options)

    def __repr__(self) -> str:
        state = "running" if self.process is not None else "stopped"
        return f"<AzuriteServer {self.host}:{self.port} {state}>"
