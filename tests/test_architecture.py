"""The package map holds: imports point one way, and no package names a checkpoint kind defined
by a package above it (runkit reads every kind through its registry)."""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# each package's source and the first-party packages it may import (besides itself)
LAYERS = {
    "recdata": (ROOT / "packages/recdata/src/recdata", set()),
    "runkit": (ROOT / "packages/runkit/src/runkit", {"recdata"}),
    "sasrec": (ROOT / "packages/student-sasrec/src/sasrec", {"recdata", "runkit"}),
    "ilora": (ROOT / "packages/teacher-ilora/src/ilora", {"recdata", "runkit", "sasrec"}),
    "distill": (ROOT / "packages/distill/src/distill", {"recdata", "runkit", "sasrec", "ilora"}),
    "serving": (ROOT / "services/serving/src/serving", {"recdata", "runkit"}),
    "teacher": (
        ROOT / "services/teacher/src/teacher",
        {"recdata", "runkit", "sasrec", "ilora", "serving"},
    ),
    "recommender": (
        ROOT / "services/recommender/src/recommender",
        {"recdata", "runkit", "sasrec", "serving"},
    ),
    "compare": (
        ROOT / "packages/compare/src/compare",
        {"recdata", "runkit", "sasrec", "ilora", "distill"},
    ),
}
ORDER = [
    "recdata",
    "runkit",
    "sasrec",
    "ilora",
    "distill",
]  # a kind's package and everything below it


def trees(package: str):
    for path in sorted(LAYERS[package][0].rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def first_party_imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):  # module level and inside functions alike
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(LAYERS)


@pytest.mark.parametrize("package", list(LAYERS))
def test_imports_point_one_way(package):
    allowed = LAYERS[package][1] | {package}
    upward = {
        f"{path.relative_to(ROOT)} imports {sorted(first_party_imports(tree) - allowed)}"
        for path, tree in trees(package)
        if first_party_imports(tree) - allowed
    }
    assert not upward


def test_the_layers_are_what_the_pyprojects_declare():
    """A package's pyproject lists what it imports (so installing one package is enough)."""
    import tomllib

    distributions = {
        "recdata": "recdata",
        "runkit": "runkit",
        "sasrec": "student-sasrec",
        "ilora": "teacher-ilora",
        "distill": "distill",
        "serving": "serving",
        "teacher": "teacher-service",
        "recommender": "recommender-service",
        "compare": "compare",
    }
    for package, (src, _) in LAYERS.items():
        pyproject = tomllib.loads((src.parents[1] / "pyproject.toml").read_text())
        declared = {
            d.split(">")[0].split("=")[0].split("[")[0].strip()
            for d in pyproject["project"]["dependencies"]
        }
        imported = set().union(*(first_party_imports(tree) for _, tree in trees(package))) - {
            package
        }
        assert {distributions[p] for p in imported} <= declared, package


def kinds_by_package() -> dict[str, str]:
    """Every registered checkpoint kind -> the package that defines it."""
    points = entry_points(group="ilora_dllm2rec.checkpoint_kinds")
    return {point.load().name: point.value.split(".")[0] for point in points}


def test_every_kind_is_registered_by_a_model_package():
    assert kinds_by_package() == {
        "sasrec": "sasrec",
        "sasrec-distilled": "distill",
        "ilora-teacher": "ilora",
    }


def test_no_package_names_a_kind_defined_above_it():
    named = []
    for kind, owner in kinds_by_package().items():
        for package in ORDER[: ORDER.index(owner)]:
            for path, tree in trees(package):
                strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
                if kind in strings:
                    named.append(f"{path.relative_to(ROOT)} names {kind!r} (defined by {owner})")
    assert not named
