"""The code a step can run, hashed: its script's import closure plus the non-Python files beside it.

A step's fingerprint must change when, and only when, code the step can execute changes. So the
script's static imports are followed through the source directory (resolved the way the step's
``sys.path`` resolves them: the script's folder first, then the source directory); Python files
outside that closure, such as other steps' scripts and helpers only they import, do not count.
When a file in the closure imports dynamically (``importlib.import_module``, ``exec``, a change
of ``sys.path``...), the closure cannot be known and every Python file is hashed instead.

Python files are hashed as a normalized token stream, not as bytes: comments, blank lines,
trailing whitespace and a consistent re-indentation do not change what the code does, so editing
them must not rerun a step. The only observable difference is the line numbers in a traceback,
which we accept (a documented product decision). Every other token is kept exactly, string
literals and docstrings included, since a program can read them.

Free of Dagster and of aml_assets above ``aml_assets.data.content``, like the fingerprint itself.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aml_assets.data.content import (
    StatCache,
    cached_digest,
    hash_bytes,
    hash_file,
    ignore_spec,
    walk_files,
)

#: Stat-cache kind of the normalized-token digest; bump with any change of the normalization.
PY_TOKENS_KIND = "py-tokens-v1"
#: Prefix of normalized-token digests, so one never equals a raw digest of the same bytes.
PY_DIGEST_PREFIX = "py1:"


@dataclass(frozen=True)
class CodeManifest:
    """The files that make up a step's code, with their digests, and how they were chosen.

    ``files`` maps a readable key to a digest: the posix path relative to the source directory
    for its files, the absolute posix path for ``hash_paths`` files. ``notes`` are plain-English
    remarks for the decision log (e.g. why the import closure fell back to every Python file).
    """

    files: dict[str, str]
    notes: list[str]


# ---------------------------------------------------------------------------------------------
# Hashing Python files as normalized tokens

# Tokens that carry no meaning: comments, and line breaks inside a statement or between them.
_DROPPED = {tokenize.COMMENT, tokenize.NL}
# Tokens whose text is layout only (the indentation width, "\n" versus "\r\n" or "" at EOF).
_MARKERS = {tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE}
# Python 3.12+ splits f-strings (3.14+ t-strings) into several tokens and drops the spaces
# between them, yet f"{x = }" prints those spaces. Such a literal is kept as its exact source text
# under the name STRING, as older Pythons tokenize it, so the digest is the same on every version.
_TEMPLATE_START = {
    getattr(tokenize, n) for n in ("FSTRING_START", "TSTRING_START") if hasattr(tokenize, n)
}
_TEMPLATE_END = {
    getattr(tokenize, n) for n in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, n)
}


def _encode_token(kind: str, text: str, out: list[bytes]) -> None:
    # Length-prefixed, so no two different token streams share bytes.
    for part in (kind.encode(), text.encode("utf-8", "surrogatepass")):
        out.append(len(part).to_bytes(8, "big") + part)


def python_digest(data: bytes) -> str:
    """Digest of Python source as normalized tokens; the raw digest if it does not tokenize.

    Token types are encoded by name (their numbers differ between Python versions).
    """
    out: list[bytes] = []
    try:
        tokens = list(tokenize.tokenize(io.BytesIO(data).readline))
        lines: list[str] | None = None
        depth = 0
        template_start = (0, 0)
        for tok in tokens:
            if tok.type == tokenize.ERRORTOKEN:
                return hash_bytes(data)  # Python < 3.12 tokenizes some syntax errors this way
            if tok.type in _TEMPLATE_START:
                depth += 1
                if depth == 1:
                    template_start = tok.start
                continue
            if depth:
                if tok.type in _TEMPLATE_END:
                    depth -= 1
                    if depth == 0:
                        if lines is None:
                            encoding = tokens[0].string  # tokenize always starts with ENCODING
                            lines = data.decode(encoding).splitlines(keepends=True)
                        _encode_token("STRING", _source_span(lines, template_start, tok.end), out)
                continue
            if tok.type in _DROPPED:
                continue
            text = "" if tok.type in _MARKERS else tok.string
            _encode_token(tokenize.tok_name[tok.type], text, out)
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, LookupError):
        # IndentationError is a SyntaxError; LookupError is an unknown coding cookie.
        return hash_bytes(data)
    return PY_DIGEST_PREFIX + hash_bytes(b"".join(out))


def _source_span(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    """The source text from ``start`` to ``end`` (tokenize's 1-based row, 0-based column)."""
    if start[0] == end[0]:
        return lines[start[0] - 1][start[1] : end[1]]
    middle = lines[start[0] : end[0] - 1]
    return lines[start[0] - 1][start[1] :] + "".join(middle) + lines[end[0] - 1][: end[1]]


def hash_python_file(path: Path, cache: StatCache | None = None) -> str:
    """``python_digest`` of a file, answered from the stat cache when it can be trusted."""
    return cached_digest(
        path, cache, PY_TOKENS_KIND, lambda p, _size: python_digest(p.read_bytes())
    )


# ---------------------------------------------------------------------------------------------
# What one Python file imports


@dataclass(frozen=True)
class _Parsed:
    """The import-relevant facts of one Python file."""

    #: (level, module, names): ``import a.b`` is (0, "a.b", ()),
    #: ``from ..p import x`` is (2, "p", ("x",)).
    imports: tuple[tuple[int, str, tuple[str, ...]], ...] = ()
    #: Words of string literals that look like a .py path (a script launched as a subprocess).
    script_paths: tuple[str, ...] = ()
    #: (line, what) of every construct that makes the closure unknowable.
    dynamic: tuple[tuple[int, str], ...] = ()


# Attributes and imported names that load code the static imports do not show.
_DYNAMIC_NAMES = {
    "import_module",  # importlib
    "spec_from_file_location",  # importlib.util
    "module_from_spec",
    "spec_from_loader",
    "exec_module",
    "load_module",
    "SourceFileLoader",  # importlib.machinery
    "run_path",  # runpy
    "run_module",
    "load_source",  # imp
    "addsitedir",  # site: extends sys.path
    "__import__",
}
_SYS_PATH_MUTATORS = {
    "append", "insert", "extend", "remove", "pop", "clear", "reverse", "sort", "__setitem__",
    "__iadd__",
}
_LOADER_MODULES = {
    "importlib", "importlib.util", "importlib.machinery", "runpy", "imp", "site", "builtins"
}
_PY_WORD = re.compile(r"[\w./\\-]+\.py(?!\w)")


def _describe(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse(data: bytes) -> _Parsed:
    """The import-relevant facts of Python source.

    Source that does not parse has unknown imports (the step's Python may accept syntax this one
    does not), so the syntax error is reported as a dynamic construct.
    """
    try:
        tree = ast.parse(data)
    except SyntaxError as exc:
        return _Parsed(dynamic=((exc.lineno or 0, "a syntax error"),))
    except ValueError:  # e.g. null bytes
        return _Parsed(dynamic=((0, "source that cannot be parsed"),))
    imports: list[tuple[int, str, tuple[str, ...]]] = []
    scripts: list[str] = []
    dynamic: list[tuple[int, str]] = []
    sys_names = {"sys"}
    # Docstrings and other bare strings name files in prose ("used by train.py"), never run them.
    bare_strings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            bare_strings.add(id(node.value))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imports.append((0, alias.name, ()))
                if alias.name == "sys" and alias.asname:
                    sys_names.add(alias.asname)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom):
            names = tuple(a.name for a in node.names)
            imports.append((node.level, node.module or "", names))
            if node.level == 0 and node.module in _LOADER_MODULES:
                loaders = [n for n in names if n in _DYNAMIC_NAMES or n == "exec"]
                dynamic += [(line, f"{node.module}.{n}") for n in loaders]
            if node.level == 0 and node.module == "sys":
                hooks = [n for n in names if n in ("path", "meta_path", "path_hooks")]
                dynamic += [(line, f"sys.{n}") for n in hooks]
        elif isinstance(node, ast.Attribute):
            if node.attr in _DYNAMIC_NAMES or (
                node.attr == "exec"
                and isinstance(node.value, ast.Name)
                and node.value.id == "builtins"
            ):
                dynamic.append((line, _describe(node)))
            elif _is_sys_path(node.value, sys_names) and node.attr in _SYS_PATH_MUTATORS:
                dynamic.append((line, _describe(node)))
            elif _is_sys_path(node, sys_names) and not isinstance(node.ctx, ast.Load):
                dynamic.append((line, f"assignment to {_describe(node)}"))
            elif (
                node.attr in ("meta_path", "path_hooks")
                and isinstance(node.value, ast.Name)
                and node.value.id in sys_names
            ):
                dynamic.append((line, _describe(node)))
        elif isinstance(node, ast.Name) and node.id in ("exec", "__import__"):
            dynamic.append((line, node.id))
        elif isinstance(node, ast.Subscript):  # sys.path[0] = ..., del sys.path[0]
            if not isinstance(node.ctx, ast.Load) and _is_sys_path(node.value, sys_names):
                dynamic.append((line, f"assignment to {_describe(node)}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ".py" in node.value:
            if id(node) not in bare_strings:
                scripts += _PY_WORD.findall(node.value)
    return _Parsed(tuple(imports), tuple(scripts), tuple(sorted(set(dynamic))))


def _is_sys_path(node: ast.AST, sys_names: set[str]) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id in sys_names
    )


# Parsing is the costly part of following imports; a file's parse only depends on its bytes.
_PARSE_CACHE: dict[tuple[str, str], _Parsed] = {}
_PARSE_CACHE_MAX = 4096


def _parsed(path: Path, cache: StatCache | None) -> _Parsed:
    key = (str(path), hash_file(path, cache))
    hit = _PARSE_CACHE.get(key)
    if hit is not None:
        return hit
    data = path.read_bytes()
    result = _parse(data)
    if len(_PARSE_CACHE) >= _PARSE_CACHE_MAX:
        _PARSE_CACHE.clear()
    # Keyed by the digest of the bytes actually parsed, in case the file changed in between.
    _PARSE_CACHE[(str(path), hash_bytes(data))] = result
    return result


# ---------------------------------------------------------------------------------------------
# Resolving module names like the step's sys.path does


@dataclass(frozen=True)
class _Found:
    """A module found under the search roots."""

    file: Path | None  # None for a namespace package (a folder without __init__.py)
    search: tuple[Path, ...] | None  # where its submodules are found; None for a plain module


class _Resolver:
    """Finds modules below a list of roots, in the order Python's path finder does."""

    def __init__(self, roots: tuple[Path, ...]):
        self.roots = roots
        self._memo: dict[str, _Found | None] = {}

    def find(self, name: str) -> _Found | None:
        """The module ``name`` (dotted, absolute), or None when it is not under the roots."""
        if name not in self._memo:
            parent, _, last = name.rpartition(".")
            if parent:
                found = self.find(parent)
                places = found.search if found is not None else None
            else:
                places = self.roots
            self._memo[name] = _find_in(last, places) if places else None
        return self._memo[name]


def _find_in(name: str, places: Iterable[Path]) -> _Found | None:
    # Per place: a package with __init__.py, else a module file, else a namespace portion; a
    # regular package or module in a later place wins over earlier namespace portions.
    portions: list[Path] = []
    for place in places:
        folder = place / name
        if (folder / "__init__.py").is_file():
            return _Found(folder / "__init__.py", (folder,))
        if (place / f"{name}.py").is_file():
            return _Found(place / f"{name}.py", None)
        if folder.is_dir():
            portions.append(folder)
    return _Found(None, tuple(portions)) if portions else None


# ---------------------------------------------------------------------------------------------
# The closure and the manifest


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _normalized(path: Path) -> Path:
    return Path(os.path.normpath(path))


def _closure(
    script: Path, source: Path, cache: StatCache | None
) -> tuple[dict[str, Path], list[tuple[str, int, str]]]:
    """Python files the script can import (key -> path), and the dynamic constructs found in them.

    Each file is visited as a module name under a list of roots (the module's package decides
    where its relative imports point; the roots are its script's). A script named in a string
    literal is followed as its own entry point, as it would run in a subprocess.
    """
    files: dict[str, Path] = {}
    dynamic: list[tuple[str, int, str]] = []
    resolvers: dict[tuple[Path, ...], _Resolver] = {}
    seen: set[tuple[Path, str, tuple[Path, ...]]] = set()

    def roots_of(entry: Path) -> tuple[Path, ...]:
        return tuple(dict.fromkeys([entry.parent, source]))

    queue: list[tuple[Path, str, tuple[Path, ...]]] = [(script, "__main__", roots_of(script))]
    while queue:
        item = queue.pop()
        if item in seen:
            continue
        seen.add(item)
        path, module, roots = item
        key = _relative(path, source)
        if key is None:
            continue  # only files of the source directory count
        files[key] = path
        parsed = _parsed(path, cache)
        dynamic += [(key, line, what) for line, what in parsed.dynamic]
        resolver = resolvers.setdefault(roots, _Resolver(roots))
        is_package = path.name == "__init__.py" and module != "__main__"
        package = module if is_package else module.rpartition(".")[0]
        for level, target, names in parsed.imports:
            if level:
                parts = package.split(".") if package else []
                if level - 1 >= len(parts):
                    continue  # beyond the top-level package: an ImportError at run time
                target = ".".join(parts[: len(parts) - level + 1] + ([target] if target else []))
            if not target:
                continue
            pieces = target.split(".")
            found = None
            # ``import a.b.c`` runs a/__init__.py, a/b/__init__.py, then a/b/c.
            for i in range(1, len(pieces) + 1):
                name = ".".join(pieces[:i])
                found = resolver.find(name)
                if found is None:
                    break
                if found.file is not None:
                    queue.append((found.file, name, roots))
            if found is None or found.search is None:
                continue
            for attr in names:  # ``from a import b``: b may be a submodule
                sub = resolver.find(f"{target}.{attr}") if attr != "*" else None
                if sub is not None and sub.file is not None:
                    queue.append((sub.file, f"{target}.{attr}", roots))
        for word in parsed.script_paths:
            for base in (source, path.parent):
                candidate = _normalized(base / word)
                inside = _relative(candidate, source) is not None
                if candidate.suffix == ".py" and inside and candidate.is_file():
                    queue.append((candidate, "__main__", roots_of(candidate)))
    return files, dynamic


def step_code(
    script: str,
    source_directory: Path,
    hash_paths: Iterable[Path] = (),
    cache: StatCache | None = None,
) -> CodeManifest:
    """Digest of every file that makes up a step's code, keyed by a readable path.

    Counted: the Python files of the script's import closure within ``source_directory`` (every
    Python file there when the closure is not known), every non-Python file there (scripts read
    them by path; ``.amlignore``, else ``.gitignore``, excludes), and every file of ``hash_paths``
    (absolute paths of files or folders, keyed by absolute path). Python files get the
    normalized-token digest (comment-only edits do not count), other files their raw digest.
    """
    source = _normalized(Path(source_directory).absolute())
    script_path = _normalized(source / script)
    script_key = _relative(script_path, source)
    if script_key is None:
        raise ValueError(f"The script {script} is not inside the source directory {source}.")
    if not script_path.is_file():
        raise FileNotFoundError(
            f"The script {script} does not exist in the source directory {source}."
        )
    extras = [Path(p) for p in hash_paths]
    for extra in extras:
        if not extra.is_absolute():
            raise ValueError(
                f"hash_paths entry {extra} is a relative path; hash_paths must be absolute "
                "(they are resolved when the step is declared)."
            )
        if not extra.exists():
            raise FileNotFoundError(f"hash_paths entry {extra} does not exist.")

    notes: list[str] = []
    python, dynamic = _closure(script_path, source, cache)
    listed = walk_files(source, ignore_spec(source))
    if dynamic:
        key, line, what = min(dynamic)
        where = f"{what} in {key}" + (f" line {line}" if line else "")
        more = f"; {len(dynamic) - 1} more" if len(dynamic) > 1 else ""
        notes.append(
            f"the import closure of {script_key} is not known ({where}{more}); "
            "every Python file in the source directory is hashed"
        )
        python.update((rel, p) for rel, p in listed if rel.endswith(".py"))

    files = {rel: hash_file(p, cache) for rel, p in listed if not rel.endswith(".py")}
    files.update((rel, hash_python_file(p, cache)) for rel, p in python.items())
    for extra in extras:
        extra = _normalized(extra)
        below = walk_files(extra, ignore_spec(extra)) if extra.is_dir() else [("", extra)]
        for rel, p in below:
            key = f"{extra.as_posix()}/{rel}" if rel else extra.as_posix()
            is_python = p.suffix == ".py"
            files[key] = hash_python_file(p, cache) if is_python else hash_file(p, cache)
    return CodeManifest(dict(sorted(files.items())), notes)
