"""bench/gpu/check.sh (also reached as bench/gpu_check.sh) is ready for the day a GPU is lent: its
dry run passes on this CPU, the wheels it carries are exactly the locked dependencies the GPU
machine lacks, and the workspace run from PYTHONPATH registers every checkpoint kind and config
schema (entry points) through the dist-info shim bench/gpu/env.py writes."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# stdlib only, loaded from its file: pytest does not put the repository root (where `bench` is a
# package) on sys.path
spec = importlib.util.spec_from_file_location("bench.gpu.env", ROOT / "bench" / "gpu" / "env.py")
gpu_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_env)


def test_the_dry_run_passes_and_covers_tests_wheels_and_benchmark():
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_ALLOW_MISSING_WHEELS": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert int(re.search(r"(\d+) CUDA tests selected", out).group(1)) >= 10
    assert all(f"{p}==" in out for p in ("hydra-core", "omegaconf", "antlr4-python3-runtime"))
    for line in (
        "registered from the src dirs",
        "teacher prefix:",
        "teacher sequence:",
        "student epoch",
        "of peak",
        "dry run passed",
    ):
        assert line in out


def test_the_old_path_runs_the_same_check():
    wrapper = (ROOT / "bench" / "gpu_check.sh").read_text().strip().splitlines()
    assert len(wrapper) == 2 and 'exec bash "$(dirname "$0")/gpu/check.sh" "$@"' in wrapper[1]


def test_a_dry_run_with_unknown_arguments_is_refused():
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dryrun"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_the_entry_point_shim_registers_every_kind_and_schema_from_the_src_dirs_alone(tmp_path):
    """A Python that sees only the src dirs, the shim and third-party packages (the GPU machine's
    view) registers every kind and every config schema conf/ composes; without the shim, none."""
    found, problems = gpu_env.registry(tmp_path / "empty")
    # the view hides the venv's installs
    assert any("checkpoint kind sasrec is not registered" in p for p in problems)
    written = gpu_env.write_entry_points(tmp_path / "site")
    assert {w.name for w in written} >= {
        "runkit-0.1.0.dist-info",
        "student_sasrec-0.1.0.dist-info",
        "distill-0.1.0.dist-info",
    }
    assert (
        "sasrec-distilled = distill.kind:KIND"
        in (tmp_path / "site" / "distill-0.1.0.dist-info" / "entry_points.txt").read_text()
    )
    found, problems = gpu_env.registry(tmp_path / "site")
    assert problems == []
    assert set(found["kinds"]) == {"sasrec", "sasrec-distilled", "ilora-teacher"}
    assert set(found["schemas"]) == gpu_env.conf_schemas() and len(found["schemas"]) >= 10
    assert {"dataset", "distill", "eval_all", "student", "teacher", "train", "trainer"} <= set(
        found["groups"]
    )


def test_the_shim_replaces_its_own_dist_infos_and_keeps_installed_ones(tmp_path):
    wheel = tmp_path / "hydra_core-1.3.8.dist-info"
    wheel.mkdir()
    (wheel / "INSTALLER").write_text("pip\n")
    stale = tmp_path / "runkit-0.0.1.dist-info"
    stale.mkdir()
    (stale / "INSTALLER").write_text(gpu_env.SHIM_INSTALLER + "\n")
    first = gpu_env.write_entry_points(tmp_path)
    assert gpu_env.write_entry_points(tmp_path) == first  # a rerun writes the same again
    assert wheel.is_dir() and not stale.exists()
    assert sorted(p.name for p in tmp_path.glob("*.dist-info")) == sorted(
        [wheel.name, *(w.name for w in first)]
    )


def test_the_src_dirs_are_the_check_scripts():
    script = (ROOT / "bench" / "gpu" / "check.sh").read_text()
    for src in gpu_env.src_dirs():
        assert f"$ROOT/{src.relative_to(ROOT)}" in script


EDITABLE = {"editable": "packages/x"}
LOCK = {
    "recdata": {
        "name": "recdata",
        "dependencies": [
            {"name": "torch"},
            {"name": "hydra-core"},
            {"name": "pywin32", "marker": "sys_platform == 'win32'"},
        ],
    },
    "runkit": {"name": "runkit", "source": EDITABLE, "dependencies": [{"name": "recdata"}]},
    "student-sasrec": {"name": "student-sasrec", "dependencies": [{"name": "recdata"}]},
    "teacher-ilora": {"name": "teacher-ilora", "dependencies": [{"name": "Omega_Conf"}]},
    "distill": {
        "name": "distill",
        "source": EDITABLE,
        "dependencies": [{"name": "teacher-service"}],
    },
    "compare": {"name": "compare", "source": EDITABLE, "dependencies": [{"name": "distill"}]},
    # a workspace package the GPU check does not import: never carried as a wheel
    "teacher-service": {
        "name": "teacher-service",
        "source": EDITABLE,
        "dependencies": [{"name": "bentoml"}],
    },
    "bentoml": {"name": "bentoml", "version": "1.4"},
    "torch": {"name": "torch", "version": "2.15", "dependencies": [{"name": "sympy"}]},
    "hydra-core": {
        "name": "hydra-core",
        "version": "1.3.8",
        "dependencies": [{"name": "omegaconf"}, {"name": "packaging"}],
    },
    "omega-conf": {"name": "omega-conf", "version": "2.3.1", "dependencies": [{"name": "antlr4"}]},
    "omegaconf": {"name": "omegaconf", "version": "2.3.1", "dependencies": [{"name": "antlr4"}]},
    "antlr4": {"name": "antlr4", "version": "4.9.3"},
    "pywin32": {"name": "pywin32", "version": "1"},
    "pytest": {"name": "pytest", "version": "8"},
    "pytest-timeout": {"name": "pytest-timeout", "version": "2"},
}


def test_carried_are_the_missing_dependencies_and_theirs_not_those_of_packages_present():
    carried = gpu_env.needed(LOCK, present={"torch", "packaging", "pytest", "pytest-timeout"})
    assert [p["name"] for p in carried] == [
        "antlr4",
        "hydra-core",
        "omega-conf",
        "omegaconf",
    ]  # no sympy, no pywin32


def test_the_real_lock_carries_hydra_and_its_parser_but_nothing_the_gpu_machine_has():
    names = {p["name"] for p in gpu_env.needed()}
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime"} <= names
    assert not names & gpu_env.device_packages() and not names & {
        "torch",
        "transformers",
        "lightning",
        "peft",
    }
    assert not names & {
        "recdata",
        "runkit",
        "distill",
        "compare",
        "student-sasrec",
        "teacher-ilora",
        "teacher-service",
    }


def test_the_wheel_check_wants_each_locked_version_once_and_nothing_else(tmp_path):
    needed = gpu_env.needed()
    assert any(p.startswith("missing:") for p in gpu_env.check_wheels(tmp_path))
    assert gpu_env.check_wheels(tmp_path, allow_missing=True) == []
    first = needed[0]
    name = first["name"].replace("-", "_")
    (tmp_path / f"{name}-0.0.1-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "stray-1.0-py3-none-any.whl").write_bytes(b"")
    problems = gpu_env.check_wheels(tmp_path, allow_missing=True)
    assert any(f"want exactly {first['version']}" in p for p in problems)
    assert any("not needed" in p and "stray" in p for p in problems)
