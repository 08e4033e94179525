"""What the GPU machine needs from us to run the workspace from PYTHONPATH (bench/gpu/check.sh):

1. the wheels: the locked dependencies (uv.lock) of the code the check runs there which that
   machine lacks (bench/gpu/device_packages.txt). It has no package registry, so they travel in
   .whl/ (bench/gpu/wheels.sh downloads them here). The workspace packages go on PYTHONPATH
   there, so their dependencies are walked from uv.lock; a dependency the machine has ends the
   walk (its own dependencies are installed there), a missing one is carried and its
   dependencies walked in turn;
2. the entry points: the packages register their checkpoint kinds and config schemas as entry
   points (runkit.kinds, runkit.config), which Python finds in an installed package's
   ``*.dist-info`` only; a src dir on PYTHONPATH has none. ``entry-points DIR`` writes a minimal
   dist-info (METADATA + entry_points.txt, from each workspace pyproject) into DIR, which the
   check puts on PYTHONPATH beside the src dirs; ``registry DIR`` proves, in a Python that sees
   only the src dirs, DIR and the third-party site-packages (no installed workspace package),
   that every kind and config schema is registered.

    python -m bench.gpu.env needed            # name==version of each wheel to carry, one a line
    python -m bench.gpu.env sdist NAME FILE   # FILE is the locked sdist of NAME (sha256), for a
                                              # wheel built here
    python -m bench.gpu.env check .whl        # exactly those wheels, at the locked versions and
                                              # hashes
    python -m bench.gpu.env src               # the src dirs the check puts on PYTHONPATH,
                                              # colon-separated
    python -m bench.gpu.env entry-points DIR  # a dist-info per workspace package in DIR
    python -m bench.gpu.env registry DIR      # kinds and schemas registered from the src dirs +
                                              # DIR alone
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import site
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# what the GPU check imports: the CUDA tests and bench.gpu.bench import recdata, runkit, sasrec and
# ilora; every Hydra run composes the config groups distill and compare register (conf/config.yaml)
WORKSPACE = ("recdata", "runkit", "student-sasrec", "teacher-ilora", "distill", "compare")
TEST_TOOLS = ("pytest", "pytest-timeout")  # the dev group's, for the CUDA tests
# the GPU machine's interpreter, for the lock's environment markers
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
# the INSTALLER of the dist-infos written here (a rerun replaces them)
SHIM_INSTALLER = "bench.gpu.env"
# what the registry must hold beyond the pyprojects' entry points: the kinds the pipeline trains
KINDS = ("sasrec", "sasrec-distilled", "ilora-teacher")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages(path: Path = ROOT / "bench" / "gpu" / "device_packages.txt") -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {canonical(line) for line in lines if line}


def lock_packages(path: Path = ROOT / "uv.lock") -> dict[str, dict]:
    return {canonical(p["name"]): p for p in tomllib.loads(path.read_text())["package"]}


def applies(dependency: dict) -> bool:
    marker = dependency.get("marker")
    if not marker:
        return True
    from packaging.markers import Marker

    return Marker(marker).evaluate(TARGET)


def needed(lock: dict[str, dict] | None = None, present: set[str] | None = None) -> list[dict]:
    """The lock entries of the packages to carry, sorted by name."""
    lock, present = lock or lock_packages(), device_packages() if present is None else present
    todo = [d for w in WORKSPACE for d in lock[w].get("dependencies", []) if applies(d)]
    todo += [{"name": t} for t in TEST_TOOLS]
    carried: dict[str, dict] = {}
    while todo:
        name = canonical(todo.pop()["name"])
        if name in WORKSPACE or name in present or name in carried or _is_workspace(lock[name]):
            continue
        carried[name] = lock[name]
        todo += [d for d in lock[name].get("dependencies", []) if applies(d)]
    return [carried[n] for n in sorted(carried)]


def _is_workspace(entry: dict) -> bool:
    """A package of this workspace (an editable or virtual source): on PYTHONPATH, never a wheel."""
    source = entry.get("source", {})
    return "editable" in source or "virtual" in source


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def check_sdist(name: str, file: Path) -> list[str]:
    entry = lock_packages()[canonical(name)]
    expected = entry.get("sdist", {}).get("hash", "").removeprefix("sha256:")
    return (
        []
        if sha256(file) == expected
        else [
            f"{file.name}: sha256 {sha256(file)} is not the locked sdist's ({expected or 'none'})"
        ]
    )


def check_wheels(directory: Path, allow_missing: bool = False) -> list[str]:
    """Problems with `directory` as the wheels to carry (empty: ready). A wheel the lock lists
    must have its locked hash; one built here from a locked sdist (no wheel in the lock) cannot."""
    wheels = sorted(directory.glob("*.whl")) if directory.is_dir() else []
    found = {}
    for wheel in wheels:
        found.setdefault(wheel_name_version(wheel)[0], []).append(wheel)
    problems = []
    for entry in needed():
        name, version = canonical(entry["name"]), entry["version"]
        files = found.pop(name, [])
        if not files:
            if not allow_missing:
                problems.append(f"missing: {name}=={version} (bash bench/gpu/wheels.sh)")
            continue
        if len(files) > 1 or wheel_name_version(files[0])[1] != version:
            problems.append(
                f"{name}: want exactly {version}, found {', '.join(f.name for f in files)}"
            )
            continue
        hashes = {w["hash"].removeprefix("sha256:") for w in entry.get("wheels", [])}
        if hashes and sha256(files[0]) not in hashes:
            problems.append(f"{files[0].name}: sha256 is not one the lock records")
    problems += [
        f"not needed (two versions stop the install): {f.name}" for fs in found.values() for f in fs
    ]
    return problems


# -- workspace from PYTHONPATH: src dirs and entry points ---------------------------------------
def workspace_projects() -> dict[str, tuple[Path, dict]]:
    """{canonical name: (project dir, [project] table)} of every packages/* and services/*
    pyproject."""
    projects = {}
    for pyproject in sorted(
        [*ROOT.glob("packages/*/pyproject.toml"), *ROOT.glob("services/*/pyproject.toml")]
    ):
        project = tomllib.loads(pyproject.read_text())["project"]
        projects[canonical(project["name"])] = (pyproject.parent, project)
    return projects


def src_dirs() -> list[Path]:
    """The src dirs of WORKSPACE, the packages the GPU check imports (its PYTHONPATH)."""
    projects = workspace_projects()
    return [projects[name][0] / "src" for name in WORKSPACE]


def entry_point_groups(project: dict) -> dict[str, dict[str, str]]:
    """{group: {name: object reference}} of a [project] table; scripts as console_scripts."""
    groups = {group: dict(points) for group, points in project.get("entry-points", {}).items()}
    for table, group in (("scripts", "console_scripts"), ("gui-scripts", "gui_scripts")):
        if project.get(table):
            groups[group] = dict(project[table])
    return groups


def write_entry_points(target: Path) -> list[Path]:
    """A minimal ``<name>-<version>.dist-info`` (METADATA, entry_points.txt, INSTALLER) per
    workspace package in `target`, replacing those an earlier call wrote there."""
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.dist-info"):
        installer = old / "INSTALLER"
        if installer.is_file() and installer.read_text().strip() == SHIM_INSTALLER:
            shutil.rmtree(old)
    written = []
    for _, project in workspace_projects().values():
        info = target / f"{re.sub(r'[-_.]+', '_', project['name'])}-{project['version']}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
        )
        sections = [
            f"[{group}]\n" + "".join(f"{name} = {ref}\n" for name, ref in points.items())
            for group, points in entry_point_groups(project).items()
        ]
        (info / "entry_points.txt").write_text("\n".join(sections))
        (info / "INSTALLER").write_text(SHIM_INSTALLER + "\n")
        written.append(info)
    return written


def third_party_view(directory: Path) -> list[Path]:
    """This interpreter's site-packages dirs as views in `directory` (a symlink per entry) without
    the workspace's own installs (dist-infos, editable .pth files): third-party packages only."""
    ours = {
        re.sub(r"[-_.]+", "_", project["name"]).lower()
        for _, project in workspace_projects().values()
    }
    views = []
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    for n, base in enumerate(Path(p) for p in [*site.getsitepackages(), *([user] if user else [])]):
        if not base.is_dir():
            continue
        view = directory / f"site{n}"
        view.mkdir(parents=True)
        for entry in base.iterdir():
            stem = entry.name.split("-")[0].lower()
            if entry.suffix == ".pth" or (
                entry.name.endswith((".dist-info", ".egg-info")) and stem in ours
            ):
                continue
            (view / entry.name).symlink_to(entry)
        views.append(view)
    return views


REGISTRY_PROBE = """
import json, sys
from importlib.metadata import entry_points
from runkit.config import registered_schemas
from runkit.kinds import kind_names
print(json.dumps({"kinds": list(kind_names()),
                  "schemas": sorted(s.name for s in registered_schemas()),
                  "groups": sorted({s.group for s in registered_schemas()}),
                  "declared": {g: sorted(p.name for p in entry_points(group=g))
                               for g in ("ilora_dllm2rec.checkpoint_kinds",
                                         "ilora_dllm2rec.config_schemas")},
                  "files": {m: getattr(sys.modules[m], "__file__", None)
                            for m in ("runkit", "sasrec", "ilora", "distill", "compare")
                            if m in sys.modules}}))
"""


def conf_schemas() -> set[str]:
    """The schema names the conf/ tree composes (`/schema/<name>`)."""
    return {
        m
        for path in (ROOT / "conf").rglob("*.yaml")
        for m in re.findall(r"/schema/(\w+)", path.read_text())
    }


def registry(shim: Path) -> tuple[dict, list[str]]:
    """(what an isolated Python registers, problems): `python -S -I` whose sys.path is the src
    dirs, `shim` and the third-party site-packages only, so nothing installed of the workspace
    is seen; every kind and config schema must come from the src dirs through the shim."""
    expected = {
        group: sorted(
            name
            for _, project in workspace_projects().values()
            for name in entry_point_groups(project).get(group, {})
        )
        for group in ("ilora_dllm2rec.checkpoint_kinds", "ilora_dllm2rec.config_schemas")
    }
    with tempfile.TemporaryDirectory(prefix="gpu-env-view-") as scratch:
        path = [*map(str, src_dirs()), str(shim), *map(str, third_party_view(Path(scratch)))]
        code = f"import sys; sys.path[:0] = {path!r}\n" + REGISTRY_PROBE
        proc = subprocess.run(
            [sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, cwd=scratch
        )
    if proc.returncode != 0:
        return {}, [f"the isolated registry probe failed:\n{proc.stderr[-3000:]}"]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    problems = [
        f"entry points of {group}: {found['declared'][group]}, the pyprojects declare {names}"
        for group, names in expected.items()
        if found["declared"][group] != names
    ]
    problems += [
        f"checkpoint kind {k} is not registered" for k in sorted(set(KINDS) - set(found["kinds"]))
    ]
    problems += [
        f"config schema {s} (used by conf/) is not registered"
        for s in sorted(conf_schemas() - set(found["schemas"]))
    ]
    outside = {
        m: f
        for m, f in found["files"].items()
        if not any(str(f).startswith(str(d)) for d in src_dirs())
    }
    problems += [f"{m} imported from {f}, not from its src dir" for m, f in outside.items()]
    return found, problems


def pinned() -> list[str]:
    return [f"{p['name']}=={p['version']}" for p in needed()]


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command in ("-h", "--help"):
        print(__doc__)
        return 0
    if command == "needed" and not args:
        print("\n".join(pinned()))
        return 0
    if command == "src" and not args:
        print(":".join(map(str, src_dirs())))
        return 0
    if command == "entry-points" and len(args) == 1:
        written = write_entry_points(Path(args[0]))
        print(
            f"entry points of {len(written)} workspace packages in {args[0]}: "
            f"{', '.join(w.name for w in written)}"
        )
        return 0
    if command == "registry" and len(args) == 1:
        found, problems = registry(Path(args[0]))
        if not problems:
            print(
                f"registered from the src dirs and {args[0]} alone (no workspace install seen): "
                f"checkpoint kinds {', '.join(found['kinds'])}; "
                f"config schemas {', '.join(found['schemas'])}"
            )
    elif command == "sdist" and len(args) == 2:
        problems = check_sdist(args[0], Path(args[1]))
    elif command == "check" and len(args) in (1, 2) and args[1:] in ([], ["--allow-missing"]):
        directory, allow_missing = Path(args[0]), args[1:] == ["--allow-missing"]
        problems = check_wheels(directory, allow_missing)
        absent = (
            [p for p in check_wheels(directory) if p.startswith("missing:")]
            if allow_missing
            else []
        )
        if not problems:
            state = (
                f"{len(absent)} not downloaded yet (bash bench/gpu/wheels.sh)"
                if absent
                else "all present"
            )
            print(f"wheels to carry in {directory}/: {', '.join(pinned())}; {state}")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
