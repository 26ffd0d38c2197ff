"""Azure Blob Storage as a datastore (adlfs), tested against the Azurite emulator.

Secrets (the account key, the connection string, a SAS token) are only ever handed to the Azure
client: they are not part of ``uri()``, ``repr()``, log lines or any error this module raises.
Configure them with ``dagster.EnvVar`` so that Dagster stores the variable's name, never its value,
in run configuration::

    AzureBlobDatastore(
        name="workspace",
        container="aml",
        connection_string=EnvVar("AZURE_STORAGE_CONNECTION_STRING"),
    )
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fsspec
from adlfs import AzureBlobFileSystem
from dagster import EnvVar
from pydantic import Field, PrivateAttr

from aml_assets.data.content import ManifestEntry, StatCache
from aml_assets.data.datastore import Datastore, check_relative_path
from aml_assets.errors import DatastoreError

_REDACTED = "***"


def _resolve(value: str | None) -> str | None:
    """A field's value; an ``EnvVar`` is read now (a resource used outside a Dagster run)."""
    if isinstance(value, EnvVar):
        return value.get_value()
    return value


def _parse_connection_string(cs: str) -> dict[str, str]:
    parts = {}
    for item in cs.split(";"):
        if "=" in item:
            key, value = item.split("=", 1)
            parts[key.strip().lower()] = value.strip()
    return parts


class _TunedBlobFileSystem(AzureBlobFileSystem):
    """adlfs with bounded retries and connect timeout (adlfs does not pass them through).

    The Azure Storage default (3 connect retries with 15 s, 18 s, 24 s back-off) makes an
    unreachable endpoint take well over a minute to report; these bound it to seconds.
    """

    def __init__(self, *args: Any, retry_total: int = 3, connection_timeout: int = 10, **kwargs: Any):
        self._retry_total = retry_total
        self._connection_timeout = connection_timeout
        super().__init__(*args, **kwargs)

    def do_connect(self) -> None:
        from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

        policy = ExponentialRetry(
            initial_backoff=1,
            increment_base=2,
            retry_total=self._retry_total,
            retry_connect=min(1, self._retry_total),
            random_jitter_range=1,
        )
        self.service_client = BlobServiceClient.from_connection_string(
            conn_str=self.connection_string,
            retry_policy=policy,
            connection_timeout=self._connection_timeout,
        )


class AzureBlobDatastore(Datastore):
    """A container (and optional folder in it) on Azure Blob Storage, like an Azure ML datastore.

    Give either connection_string, or account_name and account_key (then blob_endpoint for a
    non-default endpoint such as Azurite). Pass secrets as dagster.EnvVar.

    Example (the Dagster UI shows this text as the resource's description):

        Definitions(resources={"workspace": AzureBlobDatastore(
            container="aml", account_name="myaccount", account_key=EnvVar("AZURE_STORAGE_KEY"))})
    """

    container: str = Field(description="Blob container that holds the data (must exist).")
    account_name: str | None = Field(default=None, description="Storage account name.")
    account_key: str | None = Field(
        default=None, repr=False, description="Storage account key; pass EnvVar('AZURE_STORAGE_KEY')."
    )
    connection_string: str | None = Field(
        default=None,
        repr=False,
        description="Storage connection string; pass EnvVar('AZURE_STORAGE_CONNECTION_STRING').",
    )
    blob_endpoint: str | None = Field(
        default=None,
        description="Blob endpoint URL when using account_name/account_key off the public cloud "
        "(e.g. http://127.0.0.1:10000/devstoreaccount1 for Azurite).",
    )
    prefix: str = Field(default="", description="Root folder within the container.")
    retry_total: int = Field(default=3, description="Retries of a failed request.")
    connection_timeout: int = Field(default=10, description="Seconds to wait for a connection.")

    _fs: Any = PrivateAttr(default=None)

    def _container(self) -> str:
        container = _resolve(self.container)
        if not container:
            raise DatastoreError(
                f"Datastore '{self.name}': no container configured (is the container's "
                "environment variable set?)."
            )
        return container

    def _raw_prefix(self) -> str:
        return _resolve(self.prefix) or ""

    # --- credentials, never shown ----------------------------------------------------------
    def __repr_args__(self):  # pydantic repr: only non-secret fields
        return [(k, v) for k, v in super().__repr_args__() if k not in ("account_key", "connection_string")]

    def __repr__(self) -> str:
        return (
            f"AzureBlobDatastore(name={self.name!r}, container={_resolve(self.container)!r}, "
            f"prefix={self._raw_prefix()!r}, endpoint={self.endpoint()!r})"
        )

    __str__ = __repr__

    def _connection_string(self) -> str:
        cs = _resolve(self.connection_string)
        if cs:
            return cs
        account, key = _resolve(self.account_name), _resolve(self.account_key)
        if account and key:
            endpoint = _resolve(self.blob_endpoint)
            if endpoint:
                protocol = "http" if endpoint.startswith("http://") else "https"
                return (
                    f"DefaultEndpointsProtocol={protocol};AccountName={account};AccountKey={key};"
                    f"BlobEndpoint={endpoint};"
                )
            return (
                f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey={key};"
                "EndpointSuffix=core.windows.net"
            )
        raise DatastoreError(
            f"Datastore '{self.name}' (container '{_resolve(self.container)}') has no credentials: set "
            "connection_string=EnvVar('AZURE_STORAGE_CONNECTION_STRING'), or account_name and "
            "account_key=EnvVar('AZURE_STORAGE_KEY')."
        )

    def _secrets(self) -> list[str]:
        values = [_resolve(self.account_key), _resolve(self.connection_string)]
        for cs in [_resolve(self.connection_string)]:
            if cs:
                parsed = _parse_connection_string(cs)
                values += [parsed.get("accountkey"), parsed.get("sharedaccesssignature")]
        return sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every credential of this datastore replaced by ***."""
        for secret in self._secrets():
            text = text.replace(secret, _REDACTED)
        # Belt and braces: any key-like assignment that slipped through (e.g. from a proxy).
        return re.sub(r"(?i)(AccountKey|SharedAccessSignature|sig)=[^;&\s'\"]+", rf"\1={_REDACTED}", text)

    def endpoint(self) -> str:
        """The blob endpoint URL (no credentials), for messages."""
        try:
            cs = _resolve(self.connection_string)
        except Exception:  # noqa: BLE001 - an unset EnvVar: describe what we can
            cs = None
        if cs:
            parsed = _parse_connection_string(cs)
            if parsed.get("blobendpoint"):
                return parsed["blobendpoint"].split("?", 1)[0]
            account = parsed.get("accountname", "?")
            suffix = parsed.get("endpointsuffix", "core.windows.net")
            return f"{parsed.get('defaultendpointsprotocol', 'https')}://{account}.blob.{suffix}"
        endpoint = _resolve(self.blob_endpoint)
        if endpoint:
            return endpoint
        return f"https://{_resolve(self.account_name) or '?'}.blob.core.windows.net"

    @contextlib.contextmanager
    def _guard(self, action: str, rel: str | None = None) -> Iterator[None]:
        """Turn the Azure client's errors into a DatastoreError that names the datastore, the
        endpoint and the path, with credentials removed (and the original chain dropped, since
        Dagster records an exception's causes in the event log)."""
        try:
            yield
        except DatastoreError:
            raise
        except FileExistsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any client error, redacted below
            where = f" '{rel}' ({self.uri(rel)})" if rel else f" ({self.uri()})"
            detail = self.redact(f"{type(exc).__name__}: {exc}").strip().splitlines()
            message = (
                f"Datastore '{self.name}': could not {action}{where} on Azure Blob endpoint "
                f"{self.endpoint()}: {detail[0] if detail else type(exc).__name__}"
            )
            if getattr(exc, "status_code", None) in (401, 403):
                message += (
                    ". The credentials were refused: check the account key / connection string "
                    "(and that it belongs to this account)."
                )
            elif _is_connection_error(exc):
                message += (
                    ". The endpoint is unreachable: check the account name / blob endpoint, the "
                    "network, and that the storage service (or Azurite) is running."
                )
            raise DatastoreError(message) from None

    # --- the filesystem --------------------------------------------------------------------
    def filesystem(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            with self._guard("connect to container", None):
                fs = _TunedBlobFileSystem(
                    connection_string=self._connection_string(),
                    use_listings_cache=False,
                    skip_instance_cache=True,
                    retry_total=self.retry_total,
                    connection_timeout=self.connection_timeout,
                )
                self._probe(fs)
            self._fs = fs
        return self._fs

    def _probe(self, fs: AzureBlobFileSystem) -> None:
        """Fail fast and clearly when the endpoint is unreachable or the container missing."""
        from azure.core.exceptions import ResourceNotFoundError

        async def check() -> None:
            client = fs.service_client.get_container_client(self._container())
            await client.get_container_properties(retry_total=0)

        try:
            fsspec.asyn.sync(fs.loop, check)
        except ResourceNotFoundError:
            raise DatastoreError(
                f"Datastore '{self.name}': container '{self._container()}' does not exist on Azure Blob "
                f"endpoint {self.endpoint()}. Create it (az storage container create -n "
                f"{self._container()}) or fix the container name."
            ) from None

    def root_path(self) -> str:
        prefix = self._prefix()
        return f"{self._container()}/{prefix}" if prefix else self._container()

    def _prefix(self) -> str:
        return check_relative_path(self.name, self._raw_prefix()) if self._raw_prefix().strip("/") else ""

    def uri(self, rel: str = "") -> str:
        parts = [self._container(), self._prefix()]
        if rel:
            parts.append(check_relative_path(self.name, rel))
        return "abfs://" + "/".join(p for p in parts if p)

    def storage_options(self) -> dict[str, Any]:
        """Options for pandas/pyarrow readers of ``uri()`` paths (contains the credential)."""
        return {"connection_string": self._connection_string()}

    # --- primitives ------------------------------------------------------------------------
    def _create_exclusive(self, rel: str, data: bytes) -> bool:
        full = self.path(rel)
        with self._guard("create", rel):
            try:
                # A single Put Blob with If-None-Match: *: atomic, and exactly one writer wins.
                self.filesystem().pipe_file(full, data, overwrite=False)
            except FileExistsError:
                return False
        return True

    def publish_dir(self, local_dir: Path, rel: str) -> None:
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise DatastoreError(f"Datastore '{self.name}': cannot publish '{local_dir}': not a directory.")
        full = self.path(rel)
        with self._guard("publish", rel):
            fs = self.filesystem()
            if fs.exists(full):
                raise DatastoreError(
                    f"Datastore '{self.name}': '{rel}' ({self.uri(rel)}) already exists; published "
                    "data is never overwritten."
                )
            files = [p for p in local_dir.rglob("*") if p.is_file()]
            if files:
                # Upload concurrently; nothing refers to this fresh prefix until a commit does.
                fs.put(
                    [str(p) for p in files],
                    [f"{full}/{p.relative_to(local_dir).as_posix()}" for p in files],
                )

    # --- generic operations, with errors redacted ------------------------------------------
    def manifest(self, rel: str, cache: StatCache | None = None) -> list[ManifestEntry]:
        with self._guard("read the manifest of", rel):
            return super().manifest(rel, cache)

    def exists(self, rel: str) -> bool:
        with self._guard("check", rel):
            return super().exists(rel)

    def is_dir(self, rel: str) -> bool:
        with self._guard("check", rel):
            return super().is_dir(rel)

    def read_bytes(self, rel: str) -> bytes:
        with self._guard("read", rel):
            return super().read_bytes(rel)

    def _put(self, rel: str, data: bytes) -> None:
        # One Put Blob: atomic on blob storage (readers see the old blob or the new one).
        full = self.path(rel)
        with self._guard("write", rel):
            self.filesystem().pipe_file(full, data)  # no folders to create on blob storage

    def list_dir(self, rel: str) -> list[str]:
        with self._guard("list", rel):
            return super().list_dir(rel)

    def _remove(self, rel: str) -> None:
        full = self.path(rel)
        with self._guard("delete", rel):
            try:
                self.filesystem().rm(full, recursive=True)
            except FileNotFoundError:
                pass

    def upload_files(
        self, files: Iterable[Path | str], target_path: str, overwrite: bool = False
    ) -> list[str]:
        with self._guard("upload to", target_path):
            return super().upload_files(files, target_path, overwrite)

    def download(self, rel: str, local_dir: Path) -> Path:
        with self._guard("download", rel):
            return super().download(rel, local_dir)


def _is_connection_error(exc: BaseException) -> bool:
    from azure.core.exceptions import ServiceRequestError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ServiceRequestError, ConnectionError, TimeoutError)):
            return True
        current = current.__cause__ or current.__context__
    return False
