"""Bearer tokens of the HTTP API: created, listed and revoked from the CLI, stored hashed.

The tokens live in ``$DAGSTER_HOME/aml/tokens.json`` (directory 0700, file 0600), one entry per
token: its id, name, creation time, when it was last used, and the SHA-256 of its secret. The
secret itself is shown once, by ``aml-assets tokens create``, and never stored.

A request's token is checked against every stored hash with ``hmac.compare_digest``, so the time
an answer takes says nothing about how much of a guess was right. The file is rewritten
atomically (temporary file, fsync, rename) under a lock file, so a ``tokens revoke`` from the
CLI while ``aml-assets serve`` runs loses nothing and takes effect on the next request.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from aml_assets.errors import AmlAssetsError

_log = logging.getLogger(__name__)

#: Every secret starts with this, so a leaked one is easy to recognise (and to scan for).
SECRET_PREFIX = "aml_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
#: ``last_used`` is rewritten at most this often per token: a busy client must not turn every
#: request into a file write.
LAST_USED_RESOLUTION_S = 60.0
_FORMAT_VERSION = 1


class TokenError(AmlAssetsError):
    """A token cannot be created, found or revoked, or the token file cannot be read."""


@dataclass(frozen=True)
class TokenInfo:
    """What is known of a token, never its secret."""

    id: str
    name: str
    created: str
    last_used: str | None = None


def _hash(secret: str) -> str:
    # A fast hash is right here, unlike for passwords: a secret is 256 random bits
    # (secrets.token_urlsafe(32)), so there is no dictionary to try and brute force is out of
    # reach however fast each guess is. A slow hash (bcrypt, argon2) would only add its cost to
    # every request. The hash keeps a stolen tokens.json from being usable as credentials.
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TokenStore:
    """The API tokens of one Dagster home (``home`` is ``$DAGSTER_HOME``)."""

    def __init__(self, home: Path | str):
        self.home = Path(home).expanduser().absolute()
        self.path = self.home / "aml" / "tokens.json"
        self._lock_path = self.path.with_name("tokens.lock")
        # verify() rereads the file only when it changed (an atomic rewrite is a new inode).
        self._cache_key: tuple[int, int, int] | None = None
        self._cache: list[dict[str, Any]] = []
        self._cache_lock = threading.Lock()

    # --- the CLI's operations ---------------------------------------------------------------
    def create(self, name: str) -> tuple[str, str]:
        """Create a token named ``name``; returns ``(token_id, secret)``. The secret is not stored."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise TokenError(
                f"Token name {name!r} is not valid: use 1 to 64 letters, digits, '_', '.', '@' or "
                "'-', starting with a letter or digit (e.g. 'ci' or 'alice@laptop')."
            )
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        with self._locked() as entries:
            if any(e["name"] == name for e in entries):
                raise TokenError(
                    f"A token named '{name}' already exists; choose another name, or revoke it "
                    f"first (aml-assets tokens revoke {name})."
                )
            token_id = "tok_" + secrets.token_hex(6)
            entries.append(
                {"id": token_id, "name": name, "created": _now(), "last_used": None,
                 "sha256": _hash(secret)}
            )
        return token_id, secret

    def list(self) -> list[TokenInfo]:
        """Every token, oldest first (never the secrets)."""
        return [_info(e) for e in self._read()]

    def revoke(self, id_or_name: str) -> TokenInfo:
        """Delete the token with this id or name; requests with it are refused from now on."""
        with self._locked() as entries:
            found = [e for e in entries if id_or_name in (e["id"], e["name"])]
            if not found:
                known = [e["id"] for e in entries] + [e["name"] for e in entries]
                close = difflib.get_close_matches(id_or_name, known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                listing = (
                    ", ".join(f"{e['id']} ({e['name']})" for e in entries) or "there are none"
                )
                raise TokenError(
                    f"No token has the id or name '{id_or_name}' (tokens: {listing}).{hint}"
                )
            entries.remove(found[0])
        return _info(found[0])

    # --- the server's check -----------------------------------------------------------------
    def verify(self, secret: str) -> TokenInfo | None:
        """The token whose secret this is, or None; compares in constant time."""
        if not isinstance(secret, str) or not secret:
            return None
        digest = _hash(secret)
        match = None
        # No early exit: every stored hash is compared, whichever matches.
        for entry in self._read_cached():
            if hmac.compare_digest(digest, entry["sha256"]):
                match = entry
        if match is None:
            return None
        self._touch(match)
        return _info(match)

    def _touch(self, entry: dict[str, Any]) -> None:
        """Record when a token was last used, at most once per ``LAST_USED_RESOLUTION_S``."""
        now = datetime.now(timezone.utc)
        with contextlib.suppress(TypeError, ValueError):  # never used, or unreadable: rewrite
            last = datetime.fromisoformat(entry.get("last_used"))
            if (now - last).total_seconds() < LAST_USED_RESOLUTION_S:
                return
        try:
            with self._locked() as entries:
                for e in entries:
                    if e["id"] == entry["id"]:
                        e["last_used"] = now.isoformat(timespec="seconds")
        except OSError as exc:
            # Only bookkeeping: a read-only home must not turn a valid token into a refusal.
            _log.warning("cannot record when token %s was last used: %s", entry["id"], exc)

    # --- the file ---------------------------------------------------------------------------
    def _read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TokenError(f"Cannot read the token file {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
            entries = data["tokens"]
            if not all(isinstance(e, dict) and {"id", "name", "sha256"} <= e.keys() for e in entries):
                raise ValueError("an entry lacks its id, name or sha256")
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError(
                f"The token file {self.path} is damaged ({exc!r}); move it away and create the "
                "tokens again (aml-assets tokens create NAME)."
            ) from exc
        return entries

    def _read_cached(self) -> list[dict[str, Any]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            if key != self._cache_key:
                self._cache, self._cache_key = self._read(), key
            return self._cache

    def _ensure_dir(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.parent.stat().st_mode & 0o077:
            os.chmod(self.path.parent, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        """The entries, to change in place; written back atomically when the block succeeds."""
        self._ensure_dir()
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = self._read()
            yield entries
            self._write(entries)
        finally:
            os.close(fd)  # releases the lock

    def _write(self, entries: list[dict[str, Any]]) -> None:
        data = json.dumps({"version": _FORMAT_VERSION, "tokens": entries}, indent=2) + "\n"
        # mkstemp creates the file 0600, so the hashes are never readable by others, even briefly.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _info(entry: dict[str, Any]) -> TokenInfo:
    return TokenInfo(entry["id"], entry["name"], entry.get("created", ""), entry.get("last_used"))


# --- aml-assets tokens create NAME | list | revoke ID_OR_NAME --------------------------------


def _home_from_env() -> Path:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise TokenError(
            "DAGSTER_HOME is not set: API tokens belong to a Dagster home; export "
            "DAGSTER_HOME=/path/to/home (the Makefile uses ./.dagster_home)"
        )
    return Path(home)


def cli_tokens(args: Any, out: TextIO | None = None) -> int:
    """``aml-assets tokens create NAME | list | revoke ID_OR_NAME`` on ``$DAGSTER_HOME``."""
    out = out or sys.stdout
    store = TokenStore(getattr(args, "home", None) or _home_from_env())
    if args.action == "create":
        token_id, secret = store.create(args.name)
        # Only the secret goes to stdout, so `TOKEN=$(aml-assets tokens create ci)` works.
        out.write(secret + "\n")
        sys.stderr.write(
            f"Created token {token_id} '{args.name}'. Its secret (above) is shown only this once: "
            "store it now. Send it as 'Authorization: Bearer <secret>'.\n"
        )
    elif args.action == "list":
        tokens = store.list()
        if not tokens:
            out.write(f"No API tokens in {store.path}; create one: aml-assets tokens create NAME\n")
        for t in tokens:
            out.write(f"{t.id}  {t.name:<24} created {t.created}  last used {t.last_used or 'never'}\n")
    elif args.action == "revoke":
        info = store.revoke(args.token)
        out.write(f"Revoked token {info.id} '{info.name}': requests with it are refused now.\n")
    else:
        raise TokenError(f"Unknown tokens action {args.action!r}: use create, list or revoke.")
    return 0
