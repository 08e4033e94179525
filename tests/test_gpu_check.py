"""bench/gpu_check.sh is ready for the day a GPU is lent: its dry run passes on this CPU, and the
wheels it carries are exactly the locked dependencies the GPU machine lacks."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_env", ROOT / "bench" / "gpu_env.py")
gpu_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_env)


def test_the_dry_run_passes_and_covers_tests_wheels_and_benchmark():
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_ALLOW_MISSING_WHEELS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert int(re.search(r"(\d+) CUDA tests selected", out).group(1)) >= 10
    assert all(f"{p}==" in out for p in ("hydra-core", "omegaconf", "antlr4-python3-runtime"))
    for line in ("teacher prefix:", "teacher sequence:", "student epoch", "of peak", "dry run passed"):
        assert line in out


def test_a_dry_run_with_unknown_arguments_is_refused():
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dryrun"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


LOCK = {
    "recdata": {"name": "recdata", "dependencies": [{"name": "torch"}, {"name": "hydra-core"},
                                                    {"name": "pywin32", "marker": "sys_platform == 'win32'"}]},
    "student-sasrec": {"name": "student-sasrec", "dependencies": [{"name": "recdata"}]},
    "teacher-ilora": {"name": "teacher-ilora", "dependencies": [{"name": "Omega_Conf"}]},
    "torch": {"name": "torch", "version": "2.15", "dependencies": [{"name": "sympy"}]},
    "hydra-core": {"name": "hydra-core", "version": "1.3.8", "dependencies": [{"name": "omegaconf"}, {"name": "packaging"}]},
    "omega-conf": {"name": "omega-conf", "version": "2.3.1", "dependencies": [{"name": "antlr4"}]},
    "omegaconf": {"name": "omegaconf", "version": "2.3.1", "dependencies": [{"name": "antlr4"}]},
    "antlr4": {"name": "antlr4", "version": "4.9.3"},
    "pywin32": {"name": "pywin32", "version": "1"},
    "pytest": {"name": "pytest", "version": "8"},
    "pytest-timeout": {"name": "pytest-timeout", "version": "2"},
}  # fmt: skip


def test_carried_are_the_missing_dependencies_and_theirs_not_those_of_packages_present():
    carried = gpu_env.needed(LOCK, present={"torch", "packaging", "pytest", "pytest-timeout"})
    assert [p["name"] for p in carried] == ["antlr4", "hydra-core", "omega-conf", "omegaconf"]  # no sympy, no pywin32


def test_the_real_lock_carries_hydra_and_its_parser_but_nothing_the_gpu_machine_has():
    names = {p["name"] for p in gpu_env.needed()}
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime"} <= names
    assert not names & gpu_env.device_packages() and not names & {"torch", "transformers", "lightning", "peft"}


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
