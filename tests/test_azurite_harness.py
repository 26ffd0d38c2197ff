"""The Azurite harness works, and adlfs behaves as the project relies on (real emulator, no mocks)."""

from __future__ import annotations

import hashlib
import socket

import pandas as pd
import pytest
from adlfs import AzureBlobFileSystem

from tests.support.azurite import DEV_ACCOUNT_KEY, DEV_ACCOUNT_NAME, AzuriteServer

# Registers the session-scoped `azurite` fixture (a no-op when tests/conftest.py already does).
pytest_plugins = ["tests.support.azurite_fixtures"]

pytestmark = pytest.mark.azurite


def _fs(az: AzuriteServer, **kwargs) -> AzureBlobFileSystem:
    return AzureBlobFileSystem(
        account_name=az.account_name,
        account_key=az.account_key,
        connection_string=az.connection_string,
        skip_instance_cache=True,
        **kwargs,
    )


def test_server_addresses(azurite: AzuriteServer) -> None:
    assert azurite.account_name == DEV_ACCOUNT_NAME == "devstoreaccount1"
    assert azurite.account_key == DEV_ACCOUNT_KEY
    assert azurite.blob_endpoint == f"http://127.0.0.1:{azurite.port}/devstoreaccount1"
    assert f"BlobEndpoint={azurite.blob_endpoint};" in azurite.connection_string
    with socket.create_connection(("127.0.0.1", azurite.port), timeout=2):
        pass
    assert azurite.startup_seconds is not None and azurite.startup_seconds < 30


def test_create_container(azurite: AzuriteServer) -> None:
    azurite.create_container("harness-create")
    azurite.create_container("harness-create")  # exist_ok by default
    with azurite.blob_service_client() as client:
        names = {c.name for c in client.list_containers()}
    assert "harness-create" in names


def test_adlfs_write_read_list(azurite: AzuriteServer) -> None:
    azurite.create_container("harness-rw")
    fs = _fs(azurite)
    fs.pipe_file("harness-rw/dir/a.bin", b"alpha")
    with fs.open("harness-rw/dir/sub/b.bin", "wb") as f:
        f.write(b"beta")

    assert fs.cat_file("harness-rw/dir/a.bin") == b"alpha"
    with fs.open("harness-rw/dir/sub/b.bin", "rb") as f:
        assert f.read() == b"beta"
    assert fs.ls("harness-rw/dir") == ["harness-rw/dir/a.bin", "harness-rw/dir/sub"]
    assert fs.find("harness-rw") == ["harness-rw/dir/a.bin", "harness-rw/dir/sub/b.bin"]
    assert fs.info("harness-rw/dir/a.bin")["size"] == 5


def test_exclusive_create_raises_file_exists(azurite: AzuriteServer) -> None:
    azurite.create_container("harness-excl")
    fs = _fs(azurite)
    fs.pipe_file("harness-excl/k", b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        fs.pipe_file("harness-excl/k", b"second", overwrite=False)
    with pytest.raises(FileExistsError):
        with fs.open("harness-excl/k", "xb") as f:
            f.write(b"third")
    assert fs.cat_file("harness-excl/k") == b"first"


def test_info_etag_and_md5(azurite: AzuriteServer) -> None:
    azurite.create_container("harness-md5")
    fs = _fs(azurite, use_listings_cache=False)
    data = b"checksum me" * 100
    fs.pipe_file("harness-md5/p.bin", data)
    info = fs.info("harness-md5/p.bin")
    assert info["etag"].startswith('"') and info["etag"].endswith('"')
    assert bytes(info["content_settings"]["content_md5"]) == hashlib.md5(data).digest()
    listed = fs.find("harness-md5", detail=True)["harness-md5/p.bin"]
    assert listed["etag"] == info["etag"]
    assert bytes(listed["content_settings"]["content_md5"]) == hashlib.md5(data).digest()


def test_new_blob_visible_without_listing_cache(azurite: AzuriteServer) -> None:
    azurite.create_container("harness-cache")
    fs = _fs(azurite, use_listings_cache=False)
    fs.pipe_file("harness-cache/d/old", b"0")
    assert fs.ls("harness-cache/d") == ["harness-cache/d/old"]
    fs.pipe_file("harness-cache/d/new", b"1")
    assert "harness-cache/d/new" in fs.ls("harness-cache/d")
    assert fs.info("harness-cache/d/new")["type"] == "file"


def test_put_get_recursive_contents(azurite: AzuriteServer, tmp_path) -> None:
    azurite.create_container("harness-tree")
    fs = _fs(azurite, use_listings_cache=False)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    # Trailing slash on the source = "copy the contents", whether or not the target exists.
    fs.put(f"{src}/", "harness-tree/t/", recursive=True)
    fs.put(f"{src}/", "harness-tree/t/", recursive=True)
    assert fs.find("harness-tree/t") == ["harness-tree/t/a.txt", "harness-tree/t/sub/b.txt"]
    dst = tmp_path / "dst"
    fs.get("harness-tree/t/", f"{dst}/", recursive=True)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "a.txt",
        "sub/b.txt",
    ]
    fs.rm("harness-tree/t", recursive=True)
    assert fs.find("harness-tree/t") == []


def test_pandas_storage_options_roundtrip(azurite: AzuriteServer) -> None:
    azurite.create_container("harness-pd")
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    so = azurite.storage_options()
    df.to_parquet("az://harness-pd/df.parquet", storage_options=so)
    df.to_csv("az://harness-pd/df.csv", index=False, storage_options=so)
    pd.testing.assert_frame_equal(
        pd.read_parquet("az://harness-pd/df.parquet", storage_options=so), df
    )
    pd.testing.assert_frame_equal(pd.read_csv("az://harness-pd/df.csv", storage_options=so), df)
