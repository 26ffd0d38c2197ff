"""A step's code: the script's import closure, non-Python files, hash_paths, token digests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from aml_assets.data.content import StatCache, hash_file
from aml_assets.reuse.code import CodeManifest, hash_python_file, python_digest, step_code


def write(root: Path, rel: str, text: str = "") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def python_keys(manifest: CodeManifest) -> set[str]:
    return {k for k in manifest.files if k.endswith(".py")}


def changes(script: str, src: Path, edit: Path, text: str = "\nVALUE = 2\n") -> bool:
    """Whether appending ``text`` to ``edit`` changes the script's code manifest."""
    before = step_code(script, src).files
    with edit.open("a") as fh:
        fh.write(text)
    return step_code(script, src).files != before


# ---------------------------------------------------------------------------------------------
# The import closure


def test_subfolder_script_imports_from_its_own_folder_first(tmp_path):
    write(tmp_path, "models/tuned.py", "from base import X\nprint(X)\n")
    inner = write(tmp_path, "models/base.py", "X = 1\n")
    outer = write(tmp_path, "base.py", "X = 2\n")  # shadowed: the script's folder comes first
    manifest = step_code("models/tuned.py", tmp_path)
    assert python_keys(manifest) == {"models/tuned.py", "models/base.py"}
    assert manifest.notes == []
    assert changes("models/tuned.py", tmp_path, inner)
    assert not changes("models/tuned.py", tmp_path, outer)


def test_subfolder_script_falls_back_to_the_source_directory(tmp_path):
    write(tmp_path, "models/tuned.py", "import common\n")
    common = write(tmp_path, "common.py", "X = 1\n")
    assert python_keys(step_code("models/tuned.py", tmp_path)) == {"models/tuned.py", "common.py"}
    assert changes("models/tuned.py", tmp_path, common)


def test_relative_import_inside_a_package_includes_the_package_init(tmp_path):
    write(tmp_path, "train.py", "from pkg.a import g\n")
    init = write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/a.py", "from .b import f\nfrom .. import top\ndef g(): return f()\n")
    b = write(tmp_path, "pkg/b.py", "def f(): return 1\n")
    write(tmp_path, "pkg/unused.py", "")
    write(tmp_path, "top.py", "")  # beyond the top-level package: never imported
    assert python_keys(step_code("train.py", tmp_path)) == {
        "train.py",
        "pkg/__init__.py",
        "pkg/a.py",
        "pkg/b.py",
    }
    assert changes("train.py", tmp_path, init)
    assert changes("train.py", tmp_path, b)


def test_dotted_import_runs_every_package_init_and_namespace_packages_work(tmp_path):
    write(tmp_path, "train.py", "import a.b.c\nimport ns.mod\n")
    write(tmp_path, "a/__init__.py", "")
    write(tmp_path, "a/b/__init__.py", "")
    write(tmp_path, "a/b/c/__init__.py", "from . import d\n")
    write(tmp_path, "a/b/c/d.py", "")
    write(tmp_path, "ns/mod.py", "from . import sibling\n")  # ns/ has no __init__.py
    write(tmp_path, "ns/sibling.py", "")
    write(tmp_path, "ns/other.py", "")
    assert python_keys(step_code("train.py", tmp_path)) == {
        "train.py",
        "a/__init__.py",
        "a/b/__init__.py",
        "a/b/c/__init__.py",
        "a/b/c/d.py",
        "ns/mod.py",
        "ns/sibling.py",
    }


def test_chain_of_step_scripts(tmp_path):
    write(tmp_path, "a.py", "import b\n")
    write(tmp_path, "b.py", "def run():\n    from c import f\n    return f()\n")
    c = write(tmp_path, "c.py", "def f(): return 1\n")
    assert python_keys(step_code("a.py", tmp_path)) == {"a.py", "b.py", "c.py"}
    assert python_keys(step_code("c.py", tmp_path)) == {"c.py"}
    assert changes("a.py", tmp_path, c)


def test_helper_edit_reruns_exactly_the_scripts_that_import_it(tmp_path):
    helper = write(tmp_path, "helper.py", "X = 1\n")
    write(tmp_path, "other.py", "Y = 1\n")
    scripts = [f"step{i:02d}.py" for i in range(20)]
    for i, name in enumerate(scripts):
        write(tmp_path, name, "import helper\n" if i % 2 == 0 else "import other\n")
    before = {s: step_code(s, tmp_path).files for s in scripts}
    helper.write_text("X = 2\n")
    changed = {s for s in scripts if step_code(s, tmp_path).files != before[s]}
    assert changed == set(scripts[0::2])


def test_other_step_script_not_imported_is_excluded(tmp_path):
    write(tmp_path, "train.py", '"""Runs after prep.py."""\nimport os\n')
    prep = write(tmp_path, "prep.py", "print('prep')\n")
    assert python_keys(step_code("train.py", tmp_path)) == {"train.py"}
    assert not changes("train.py", tmp_path, prep)


def test_from_package_import_submodule_file(tmp_path):
    write(tmp_path, "train.py", "from utils import io, NAME\n")
    write(tmp_path, "utils/__init__.py", "NAME = 'x'\n")
    io = write(tmp_path, "utils/io.py", "")
    write(tmp_path, "utils/plots.py", "")
    assert python_keys(step_code("train.py", tmp_path)) == {
        "train.py",
        "utils/__init__.py",
        "utils/io.py",
    }
    assert changes("train.py", tmp_path, io)


def test_imports_in_functions_and_try_blocks_are_followed(tmp_path):
    write(
        tmp_path,
        "train.py",
        """
        try:
            import fast
        except ImportError:
            import slow
        if __name__ == "__main__":
            def main():
                import inner
        """,
    )
    for name in ("fast", "slow", "inner"):
        write(tmp_path, f"{name}.py", "")
    assert python_keys(step_code("train.py", tmp_path)) == {
        "train.py",
        "fast.py",
        "slow.py",
        "inner.py",
    }


def test_stdlib_and_external_imports_are_ignored(tmp_path):
    code = "import os, numpy\nimport xml.etree.ElementTree\nfrom json import loads\n"
    write(tmp_path, "train.py", code)
    manifest = step_code("train.py", tmp_path)
    assert python_keys(manifest) == {"train.py"}
    assert manifest.notes == []


def test_script_launched_by_path_is_included(tmp_path):
    code = 'import subprocess, sys\nsubprocess.run([sys.executable, "tools/prep.py"])\n'
    write(tmp_path, "train.py", code)
    write(tmp_path, "tools/prep.py", "import shared\n")
    write(tmp_path, "tools/shared.py", "")
    assert python_keys(step_code("train.py", tmp_path)) == {
        "train.py",
        "tools/prep.py",
        "tools/shared.py",
    }


# ---------------------------------------------------------------------------------------------
# Dynamic code


def test_dynamic_import_hashes_every_python_file_with_a_note(tmp_path):
    write(tmp_path, "models/tuned.py", "from helpers import loader\n")
    write(tmp_path, "helpers/__init__.py", "")
    write(
        tmp_path,
        "helpers/loader.py",
        "import importlib\n\n\ndef load(name):\n    return importlib.import_module(name)\n",
    )
    write(tmp_path, "unrelated.py", "")
    manifest = step_code("models/tuned.py", tmp_path)
    assert python_keys(manifest) == {
        "models/tuned.py",
        "helpers/__init__.py",
        "helpers/loader.py",
        "unrelated.py",
    }
    assert manifest.notes == [
        "the import closure of models/tuned.py is not known (importlib.import_module in "
        "helpers/loader.py line 5); every Python file in the source directory is hashed"
    ]


@pytest.mark.parametrize(
    "code",
    [
        "from importlib import import_module as im\n",
        "m = __import__('x')\n",
        "exec(open('x.py').read())\n",
        "import runpy\nrunpy.run_path('x.py')\n",
        "import importlib.util\nimportlib.util.spec_from_file_location('x', 'x.py')\n",
        "import sys\nsys.path.insert(0, 'lib')\n",
        "import sys as s\ns.path += ['lib']\n",
        "import sys\nsys.path[:0] = ['lib']\n",
    ],
)
def test_every_dynamic_construct_triggers_the_fallback(tmp_path, code):
    write(tmp_path, "train.py", code)
    write(tmp_path, "lib/unrelated.py", "")
    manifest = step_code("train.py", tmp_path)
    assert "lib/unrelated.py" in manifest.files
    assert len(manifest.notes) == 1 and "train.py line" in manifest.notes[0]


def test_dynamic_names_in_comments_and_strings_do_not_trigger(tmp_path):
    write(
        tmp_path,
        "train.py",
        '''
        """Never importlib.import_module or exec( here."""
        # importlib.import_module("x"); sys.path.insert(0, "y"); __import__("z")
        HELP = "use importlib.import_module(name) or runpy.run_path"
        print(sys_path := "sys.path.append")
        ''',
    )
    write(tmp_path, "unrelated.py", "")
    manifest = step_code("train.py", tmp_path)
    assert python_keys(manifest) == {"train.py"}
    assert manifest.notes == []


def test_syntax_error_in_the_closure_falls_back(tmp_path):
    write(tmp_path, "train.py", "import broken\n")
    write(tmp_path, "broken.py", "def f(:\n")
    write(tmp_path, "unrelated.py", "")
    manifest = step_code("train.py", tmp_path)
    assert python_keys(manifest) == {"train.py", "broken.py", "unrelated.py"}
    assert "a syntax error in broken.py line 1" in manifest.notes[0]


# ---------------------------------------------------------------------------------------------
# Python files hash as normalized tokens

BASE = '''\
"""Doc."""
import os


def f(x):
    if x:
        return os.sep + "a"  # why
    return 'b'
'''


@pytest.mark.parametrize(
    "variant",
    [
        BASE.replace("# why", "# a different reason"),
        "#!/usr/bin/env python\n# header\n" + BASE,
        BASE.replace("\n\n\n", "\n\n\n\n\n"),
        BASE.replace("    ", "  "),  # consistent re-indentation
        BASE.replace("\n", "   \n"),  # trailing whitespace
        BASE.replace("\n", "\r\n"),
        BASE.rstrip("\n"),  # no newline at the end
        BASE.replace("os.sep + ", "os.sep + \\\n            "),  # a line continuation
    ],
)
def test_layout_and_comment_edits_hash_the_same(variant):
    assert python_digest(BASE.encode()) == python_digest(variant.encode())


@pytest.mark.parametrize(
    "variant",
    [
        BASE.replace('"""Doc."""', '"""Docs."""'),
        BASE.replace('"a"', '"a "'),
        BASE.replace("'b'", '"b"'),
        BASE.replace("return 'b'", "return 'c'"),
        BASE.replace("if x:", "if not x:"),
        BASE.replace("    return 'b'", "        return 'b'"),  # moved into the if block
        BASE + "f(1)\n",
    ],
)
def test_code_string_and_docstring_edits_hash_differently(variant):
    assert python_digest(BASE.encode()) != python_digest(variant.encode())


def test_self_documenting_fstring_spacing_counts():
    assert python_digest(b'print(f"{x=}")\n') != python_digest(b'print(f"{x = }")\n')


def test_python_digest_is_prefixed_and_never_the_raw_digest(tmp_path):
    p = write(tmp_path, "m.py", BASE)
    assert hash_python_file(p).startswith("py1:")
    assert hash_python_file(p) != hash_file(p)


@pytest.mark.parametrize(
    "source",
    ['x = """never closed\n', "if x:\n        a = 1\n    b = 2\n"],
)
def test_untokenizable_file_falls_back_to_raw_digest(tmp_path, source):
    p = write(tmp_path, "bad.py", source)
    assert hash_python_file(p) == hash_file(p)


def test_comment_edit_in_a_helper_does_not_change_the_manifest(tmp_path):
    write(tmp_path, "train.py", "import helper\n")
    helper = write(tmp_path, "helper.py", "X = 1\n")
    assert not changes("train.py", tmp_path, helper, "# just a note\n\n")
    assert changes("train.py", tmp_path, helper, "Y = 'note'\n")


def test_stat_cache_gives_the_same_digests_and_sees_edits(tmp_path):
    src = tmp_path / "src"
    write(src, "train.py", "import helper\n")
    helper = write(src, "helper.py", "X = 1\n")
    cache = StatCache(tmp_path / "cache.sqlite")
    try:
        first = step_code("train.py", src, cache=cache).files
        assert step_code("train.py", src, cache=cache).files == first
        assert step_code("train.py", src).files == first
        helper.write_text("X = 22\n")
        assert step_code("train.py", src, cache=cache).files != first
    finally:
        cache.close()


# ---------------------------------------------------------------------------------------------
# Non-Python files and hash_paths


def test_non_python_files_are_included_unless_ignored(tmp_path):
    write(tmp_path, "train.py", "")
    config = write(tmp_path, "config.yaml", "lr: 0.1\n")
    write(tmp_path, "outputs/model.bin", "weights")
    write(tmp_path, ".amlignore", "outputs/\n")
    write(tmp_path, ".gitignore", "config.yaml\n")  # .amlignore wins over .gitignore
    manifest = step_code("train.py", tmp_path)
    assert set(manifest.files) == {"train.py", "config.yaml", ".amlignore", ".gitignore"}
    assert manifest.files["config.yaml"] == hash_file(config)
    assert changes("train.py", tmp_path, config, "epochs: 3\n")


def test_hash_paths_files_and_folders(tmp_path):
    src = tmp_path / "src"
    write(src, "train.py", "")
    lib = tmp_path / "lib"
    mod = write(lib, "pkg/mod.py", "X = 1  # note\n")
    write(lib, "data.txt", "d")
    single = write(tmp_path, "extra.json", "{}")
    manifest = step_code("train.py", src, hash_paths=[lib, single])
    assert set(manifest.files) == {
        "train.py",
        f"{lib.as_posix()}/pkg/mod.py",
        f"{lib.as_posix()}/data.txt",
        single.as_posix(),
    }
    assert manifest.files[f"{lib.as_posix()}/pkg/mod.py"] == hash_python_file(mod)
    assert manifest.files[single.as_posix()] == hash_file(single)


def test_relative_hash_path_is_rejected(tmp_path):
    write(tmp_path, "train.py", "")
    with pytest.raises(ValueError, match=r"hash_paths entry lib/extra is a relative path"):
        step_code("train.py", tmp_path, hash_paths=[Path("lib/extra")])


def test_missing_or_escaping_script_is_rejected(tmp_path):
    (tmp_path / "src").mkdir()
    write(tmp_path, "outside.py", "")
    with pytest.raises(FileNotFoundError, match="train.py"):
        step_code("train.py", tmp_path / "src")
    with pytest.raises(ValueError, match="not inside the source directory"):
        step_code("../outside.py", tmp_path / "src")


def test_same_inputs_give_the_same_manifest(tmp_path):
    write(tmp_path, "train.py", "import b, a\n")
    write(tmp_path, "a.py", "")
    write(tmp_path, "b.py", "")
    write(tmp_path, "data.csv", "x\n1\n")
    first, second = step_code("train.py", tmp_path), step_code("train.py", tmp_path)
    assert first == second
    assert list(first.files) == list(second.files)
