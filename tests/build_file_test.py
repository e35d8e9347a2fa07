"""The root BUILD file declares every source and test file, and nothing stale.

BUILD is read as text (it is Starlark, which Python's parser reads for the
simple calls it holds); Bazel itself is not needed. If this fails after adding
or moving files, run `python3 tools/generate_build.py`.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "BUILD"


def _repo_files(top, predicate):
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
        and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
        and predicate(p.name)
    )


def _string_list(node, where):
    """A list of string literals, or several joined with `+`."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _string_list(node.left, where) + _string_list(node.right, where)
    assert isinstance(node, ast.List), f"{where}: expected a list literal"
    values = []
    for elt in node.elts:
        assert isinstance(elt, ast.Constant) and isinstance(elt.value, str), (
            f"{where}: expected string literals")
        values.append(elt.value)
    return values


def _rules():
    """Every py_library / py_test call in BUILD, as dicts of its arguments."""
    tree = ast.parse(BUILD.read_text(encoding="utf-8"), filename=str(BUILD))
    rules = []
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
            continue
        call = stmt.value
        kind = getattr(call.func, "id", None)
        if kind not in ("py_library", "py_test"):
            continue
        args = {kw.arg: kw.value for kw in call.keywords}
        assert isinstance(args.get("name"), ast.Constant), f"BUILD:{call.lineno}: no name"
        name = args["name"].value
        where = f"BUILD:{call.lineno} {kind}({name!r})"
        rules.append({
            "kind": kind,
            "name": name,
            "srcs": _string_list(args["srcs"], where) if "srcs" in args else [],
            "deps": _string_list(args["deps"], where) if "deps" in args else [],
            "main": args["main"].value if isinstance(args.get("main"), ast.Constant) else None,
        })
    return rules


@pytest.fixture(scope="module")
def rules():
    assert BUILD.is_file(), "BUILD is missing at the repository root"
    return _rules()


def test_build_parses_into_libraries_and_tests(rules):
    kinds = [r["kind"] for r in rules]
    assert "py_library" in kinds
    assert "py_test" in kinds
    names = [r["name"] for r in rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert duplicates == [], f"duplicate target names: {duplicates}"


def test_every_package_module_is_in_a_py_library(rules):
    package_files = _repo_files("tfp_flows", lambda name: True)
    assert "tfp_flows/__init__.py" in package_files
    declared = {s for r in rules if r["kind"] == "py_library" for s in r["srcs"]}
    missing = [p for p in package_files if p not in declared]
    assert missing == [], f"tfp_flows modules missing from BUILD py_library srcs: {missing}"


def test_tfp_flows_library_holds_the_package(rules):
    (library,) = [r for r in rules if r["name"] == "tfp_flows"]
    assert library["kind"] == "py_library"
    assert "tfp_flows/__init__.py" in library["srcs"]
    assert all(s.startswith("tfp_flows/") for s in library["srcs"]), library["srcs"]


def test_every_test_file_has_a_py_test(rules):
    test_files = _repo_files("tests", lambda name: name.endswith("_test.py"))
    assert "tests/build_file_test.py" in test_files
    py_tests = [r for r in rules if r["kind"] == "py_test"]
    missing = [p for p in test_files if not any(p in r["srcs"] for r in py_tests)]
    assert missing == [], f"test files without a py_test in BUILD: {missing}"


def test_each_py_test_runs_its_own_file_against_the_library(rules):
    helpers = _repo_files("tests", lambda name: not name.endswith("_test.py"))
    problems = []
    for rule in (r for r in rules if r["kind"] == "py_test"):
        own = [s for s in rule["srcs"] if s.endswith("_test.py")]
        if len(own) != 1:
            problems.append(f"{rule['name']}: srcs hold {len(own)} *_test.py files: {own}")
            continue
        if rule["main"] != own[0]:
            problems.append(
                f"{rule['name']}: main {rule['main']!r} is not its test file {own[0]!r}")
        if ":tfp_flows" not in rule["deps"]:
            problems.append(f"{rule['name']}: deps {rule['deps']} lack ':tfp_flows'")
        lacking = [h for h in helpers if h not in rule["srcs"]]
        if lacking:
            problems.append(f"{rule['name']}: srcs lack test helpers {lacking}")
    assert problems == []


def test_every_test_helper_is_in_a_py_library(rules):
    helpers = _repo_files("tests", lambda name: not name.endswith("_test.py"))
    declared = {s for r in rules if r["kind"] == "py_library" for s in r["srcs"]}
    missing = [p for p in helpers if p not in declared]
    assert missing == [], f"test helper files missing from BUILD py_library srcs: {missing}"


def test_every_path_named_in_build_exists(rules):
    named = sorted({s for r in rules for s in r["srcs"]}
                   | {r["main"] for r in rules if r["main"]})
    assert named, "BUILD names no files"
    stale = [p for p in named if not (ROOT / p).is_file()]
    assert stale == [], f"BUILD names files that do not exist: {stale}"


if __name__ == "__main__":
    # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
    import sys

    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
