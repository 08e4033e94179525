"""The wheels the GPU machine needs from us: the locked dependencies (uv.lock) of the code that
bench/gpu_check.sh runs there which that machine lacks (bench/gpu_device_packages.txt). It has no
package registry, so they travel in .whl/ (bench/gpu_wheels.sh downloads them here).

The workspace packages go on PYTHONPATH there, so their dependencies are walked from uv.lock; a
dependency the machine has ends the walk (its own dependencies are installed there), a missing
one is carried and its dependencies walked in turn.

    python bench/gpu_env.py needed           # name==version of each wheel to carry, one a line
    python bench/gpu_env.py sdist NAME FILE  # FILE is the locked sdist of NAME (sha256), for a wheel built here
    python bench/gpu_env.py check .whl       # exactly those wheels, at the locked versions and hashes
"""

from __future__ import annotations

import hashlib
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ("recdata", "student-sasrec", "teacher-ilora")  # what the GPU check imports
TEST_TOOLS = ("pytest", "pytest-timeout")  # the dev group's, for the CUDA tests
# the GPU machine's interpreter, for the lock's environment markers
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages(path: Path = ROOT / "bench" / "gpu_device_packages.txt") -> set[str]:
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
        if name in WORKSPACE or name in present or name in carried:
            continue
        carried[name] = lock[name]
        todo += [d for d in lock[name].get("dependencies", []) if applies(d)]
    return [carried[n] for n in sorted(carried)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def check_sdist(name: str, file: Path) -> list[str]:
    entry = lock_packages()[canonical(name)]
    expected = entry.get("sdist", {}).get("hash", "").removeprefix("sha256:")
    return [] if sha256(file) == expected else [f"{file.name}: sha256 {sha256(file)} is not the locked sdist's ({expected or 'none'})"]


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
                problems.append(f"missing: {name}=={version} (bash bench/gpu_wheels.sh)")
            continue
        if len(files) > 1 or wheel_name_version(files[0])[1] != version:
            problems.append(f"{name}: want exactly {version}, found {', '.join(f.name for f in files)}")
            continue
        hashes = {w["hash"].removeprefix("sha256:") for w in entry.get("wheels", [])}
        if hashes and sha256(files[0]) not in hashes:
            problems.append(f"{files[0].name}: sha256 is not one the lock records")
    problems += [f"not needed (two versions stop the install): {f.name}" for fs in found.values() for f in fs]
    return problems


def pinned() -> list[str]:
    return [f"{p['name']}=={p['version']}" for p in needed()]


def main(argv: list[str]) -> int:
    if argv[:1] == ["needed"]:
        print("\n".join(pinned()))
        return 0
    if argv[:1] == ["sdist"] and len(argv) == 3:
        problems = check_sdist(argv[1], Path(argv[2]))
    elif argv[:1] == ["check"] and len(argv) in (2, 3):
        directory, allow_missing = Path(argv[1]), argv[2:] == ["--allow-missing"]
        problems = check_wheels(directory, allow_missing)
        absent = [p for p in check_wheels(directory) if p.startswith("missing:")] if allow_missing else []
        if not problems:
            state = f"{len(absent)} not downloaded yet (bash bench/gpu_wheels.sh)" if absent else "all present"
            print(f"wheels to carry in {directory}/: {', '.join(pinned())}; {state}")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
