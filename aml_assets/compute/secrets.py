"""Secrets stay out of step processes and out of everything Dagster records.

A step's script gets no datastore credential unless its step sets ``datastore_credentials=True``:
``step_env`` drops every variable whose value holds a known secret, and the well-known Azure
credential variables. Whatever a step prints, reports or raises is passed through a
``Redactor`` before Dagster stores it (compute logs, the event log, failure messages, metrics).

The op (``pipeline/assets.py``) knows the datastores a step can reach: it collects their secrets
with ``collect_secrets`` and hands them, with the step's ``datastore_credentials``, to the
step's execution, which passes them on in its ``StepLaunch``.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

REDACTED = "***"

#: Environment variables that hold a credential, whatever their value.
CREDENTIAL_VARIABLES = frozenset(
    {
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        "AZURE_PASSWORD",
        "AZURE_FEDERATED_TOKEN",
        "AZUREML_RUN_TOKEN",
    }
)
# A key-like assignment from any source (an account key in a connection string, a SAS token's sig).
_PATTERN = re.compile(
    r"(?i)\b(AccountKey|SharedAccessSignature|sig)=[^;&\s'\"]+"
)
# Values shorter than this are not treated as secrets (they would redact ordinary words).
_MIN_SECRET = 8


def collect_secrets(resources: Iterable[Any]) -> list[str]:
    """The secret values of every resource that has some (a datastore's ``_secrets()``), plus
    those of the well-known credential variables set in this process's environment."""
    values: set[str] = set()
    for resource in resources:
        getter = getattr(resource, "_secrets", None)
        if getter is None:
            continue
        try:
            values.update(v for v in getter() if v)
        except Exception:  # noqa: BLE001 - an unset credential variable: nothing to hide
            pass
    values.update(v for k, v in os.environ.items() if k in CREDENTIAL_VARIABLES and v)
    # The key (or SAS) inside a connection string is a secret on its own too.
    for value in list(values):
        for match in _PATTERN.finditer(value):
            values.add(match.group(0).split("=", 1)[1])
    return sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)


class Redactor:
    """Replaces known secret values, and key-like assignments, by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted(
            {s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "=" in text:
            text = _PATTERN.sub(rf"\1={REDACTED}", text)
        return text

    def value(self, value: Any) -> Any:
        """``value`` with every string in it (nested in lists and dicts) redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(v) for v in value)
        return value


def holds_secret(value: str, secrets: Iterable[str]) -> bool:
    """Whether ``value`` contains one of ``secrets`` or a key-like assignment."""
    return any(s in value for s in secrets) or bool(_PATTERN.search(value))


def step_env(env: Mapping[str, str], secrets: Iterable[str], credentials: bool) -> dict[str, str]:
    """The environment of a step process: without credentials unless ``credentials``."""
    if credentials:
        return dict(env)
    secrets = list(secrets)
    return {
        k: v
        for k, v in env.items()
        if k not in CREDENTIAL_VARIABLES and not holds_secret(v, secrets)
    }


#: Variables an in-process step has hidden from ``os.environ`` while it runs: another step
#: starting meanwhile (threaded executor) still builds its environment from the full one.
_hidden: dict[str, str] = {}
_hidden_lock = threading.Lock()


def full_environ() -> dict[str, str]:
    """``os.environ`` with whatever an in-process step is hiding from it right now."""
    with _hidden_lock:
        return {**os.environ, **_hidden}


@contextlib.contextmanager
def scrubbed_environ(secrets: Iterable[str], credentials: bool) -> Iterator[None]:
    """``os.environ`` without credentials for a block (an in-process script), then restored."""
    if credentials:
        yield
        return
    with _hidden_lock:
        kept = step_env(os.environ, secrets, credentials=False)
        removed = {k: v for k, v in os.environ.items() if k not in kept}
        _hidden.update(removed)
        for name in removed:
            del os.environ[name]
    try:
        yield
    finally:
        with _hidden_lock:
            for name, value in removed.items():
                os.environ[name] = value
                _hidden.pop(name, None)


class RedactingWriter:
    """A text stream that redacts whole lines before they reach ``stream``."""

    def __init__(self, stream: TextIO, redact: Redactor):
        self._stream, self._redact, self._pending = stream, redact, ""

    def write(self, text: str) -> int:
        data = self._pending + text
        head, sep, self._pending = data.rpartition("\n")
        if sep:
            self._stream.write(self._redact(head + sep))
        if len(self._pending) > 65536:  # a very long line without newline: let it through
            self.flush()
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            self._stream.write(self._redact(pending))
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_stdio(redact: Redactor) -> Iterator[None]:
    """``sys.stdout``/``sys.stderr`` redacted for a block (an in-process script's output)."""
    import sys

    saved = sys.stdout, sys.stderr
    out, err = RedactingWriter(saved[0], redact), RedactingWriter(saved[1], redact)
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        for stream in (out, err):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = saved


# --- the secrets of the step being run -----------------------------------------------------------
