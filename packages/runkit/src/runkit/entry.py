"""The Hydra entry point every command is: `@hydra_entry("run_<command>")` on `task(cfg)`.

Every entry point composes the shared `conf/` tree against the typed schemas (`runkit.config`),
turns a config error (unknown key or group, a value of the wrong type or out of its range) into
one `error:` line and exit code 2, continues `train.resume=<run_dir>` with that run's own saved
config, and leaves no run directory behind when it fails with a user error. Run directories are
`result/result_{YYYYmmdd_HHMMSS}/`, created exclusively (a second run started in the same second
gets `..._1`); commands print `run_dir: <path>` as their last line.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recdata.errors import UserError, report_and_exit
from runkit.config import canonical_config, check_config, describe_override_error, register_schemas

log = logging.getLogger(__name__)
CONF_ENV = "ILORA_CONF_DIR"
CONFIG_FILE = "config.yaml"
# What a run's start leaves in its directory (Hydra's files, the log, config.yaml): a failed
# run holding only these is removed; anything else there keeps the directory.
START_ARTEFACTS = (".hydra", CONFIG_FILE, "tensorboard", "multirun.yaml")


def config_dir() -> str:
    """The shared `conf/` tree: $ILORA_CONF_DIR, else the nearest `conf/config.yaml` above the
    working directory, else the checkout this package is installed from (editable install)."""
    if os.environ.get(CONF_ENV):
        return str(Path(os.environ[CONF_ENV]).resolve())
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / "conf" / "config.yaml").is_file():
            return str(parent / "conf")
    return str(Path(__file__).resolve().parents[4] / "conf")


# -- unique run directories -------------------------------------------------------------------
def claim_directory(base: str) -> str:
    """Create `base` exclusively, or `base_1`, `base_2`, ... when it is taken, and return it.
    Used by conf/config.yaml as `${unique_dir:...}` for Hydra's run and sweep dirs; the resolver
    is cached, so Hydra reads one claimed directory per run (and per sweep)."""
    path = Path(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        candidate = path if n == 0 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return str(candidate)
    raise AssertionError("unreachable")


OmegaConf.register_new_resolver("unique_dir", claim_directory, use_cache=True, replace=True)


# -- entry points ------------------------------------------------------------------------------
def hydra_entry(config_name: str) -> Callable:
    """Decorate `task(cfg) -> None` as a Hydra command (see the module docstring)."""
    import hydra

    register_schemas()

    def decorate(task: Callable) -> Callable:
        started = False

        @functools.wraps(task)  # Hydra names the job (and its log file) after the task's module
        def guarded(cfg):
            nonlocal started
            started = True
            try:
                return task(prepare_config(cfg))
            except UserError as error:
                discard_run_dir(hydra_run_dir())
                report_and_exit(error)

        hydra_main = hydra.main(
            version_base="1.3", config_path=config_dir(), config_name=config_name
        )(guarded)

        @functools.wraps(task)
        def entry():
            nonlocal started
            started = False
            from hydra.errors import HydraException
            from omegaconf.errors import OmegaConfBaseException

            full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))  # the caller asked for raw errors
            with _hydra_raises():
                try:
                    return hydra_main()
                except Exception as error:
                    if not started and isinstance(error, HydraException | OmegaConfBaseException):
                        report_and_exit(
                            UserError(describe_override_error(error) or one_line(error))
                        )
                    if full_error:
                        raise
                    # a bug in the task: its traceback and exit 1, as Hydra does
                    traceback.print_exc()
                    sys.exit(1)

        return entry

    return decorate


@contextlib.contextmanager
def _hydra_raises() -> Iterator[None]:
    """HYDRA_FULL_ERROR=1 makes Hydra raise a composition error (unknown key, unknown group)
    instead of printing a multi-line report and exiting 1, so the entry can report one line
    (and, for any other error, print the traceback and exit 1 itself)."""
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def one_line(error: Exception) -> str:
    """Hydra's multi-line composition report as one line (the search path dropped)."""
    parts: list[str] = []
    for line in str(error).splitlines():
        if line.startswith("Config search path"):
            break
        if line.startswith("\t") and parts and parts[-1].endswith(":"):
            parts[-1] += f" {line.strip()}"
        elif line.startswith("\t") and parts and ":" in parts[-1]:
            parts[-1] += f", {line.strip()}"
        elif line.strip():
            parts.append(line.strip())
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        parts.append(f"({str(cause).splitlines()[0].strip()})")
    return " ".join(parts)


def prepare_config(cfg: DictConfig) -> DictConfig:
    """The config the task runs with: a resumed run's own, then checked as a whole."""
    from omegaconf.errors import OmegaConfBaseException

    try:  # an interpolation that cannot resolve (e.g. a missing ${oc.env:...}) is a config error
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise UserError(f"config {error.full_key}: {str(error).splitlines()[0]}") from None
    if OmegaConf.select(cfg, "train.resume"):
        cfg = resumed_config(cfg)
    cfg = canonical_config(cfg)
    OmegaConf.set_struct(cfg, True)
    check_config(cfg)
    return cfg


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config a command composes (e.g. `compose("run_teacher", ["experiment=cpu_demo"])`),
    outside a run: for tests and benchmarks."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def announce_run_dir(run_dir: Path) -> None:
    print(f"run_dir: {run_dir}", flush=True)


# -- resume ------------------------------------------------------------------------------------
def resumed_config(cfg: DictConfig) -> DictConfig:
    """`train.resume=<run_dir>`: that run's saved config.yaml with this command line's key
    overrides on top (so `train.resume=X train.max_epochs=80` extends X). A config-group
    override that differs from the run's own choice is refused: it would silently replace
    settings the run was started with."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run_dir = Path(cfg.train.resume)
    if not (run_dir / CONFIG_FILE).is_file():
        what = (
            "no such directory"
            if not run_dir.is_dir()
            else f"not a run directory (no {CONFIG_FILE})"
        )
        raise UserError(f"train.resume={run_dir}: {what}")
    # an older run's earlier key names too
    saved = canonical_config(OmegaConf.load(run_dir / CONFIG_FILE))
    hydra_cfg = HydraConfig.get()
    choices, own_choices = hydra_cfg.runtime.choices, _original_choices(run_dir)
    for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
        key = override.key_or_group
        if key in choices:
            if own_choices.get(key) != choices[key]:
                raise UserError(
                    f"train.resume: {override.input_line} changes the config group {key!r} of "
                    f"{run_dir} (it ran with {key}={own_choices.get(key)}); "
                    "override single keys instead"
                )
        elif override.is_delete():
            _delete_key(saved, key)
        else:
            value = OmegaConf.select(cfg, key)
            value = (
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            )
            OmegaConf.update(saved, key, value, merge=False, force_add=True)
    OmegaConf.update(saved, "train.resume", str(run_dir), force_add=True)
    log.info("train.resume=%s: continuing with its saved %s", run_dir, CONFIG_FILE)
    return saved


def _original_choices(run_dir: Path) -> dict:
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    return OmegaConf.to_container(OmegaConf.load(path).hydra.runtime.choices)


def _delete_key(cfg: DictConfig, key: str) -> None:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if parent is not None and leaf in parent:
        parent.pop(leaf)


def discard_run_dir(run_dir: Path) -> None:
    """Remove a failed run's directory when it holds only what a run's start writes (no
    checkpoint, nothing else), then an emptied multirun sweep directory above it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not _only_start_artefacts(run_dir):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    sweep = run_dir.parent
    if (sweep / "multirun.yaml").is_file() and _only_start_artefacts(sweep):
        shutil.rmtree(sweep, ignore_errors=True)


def _only_start_artefacts(directory: Path) -> bool:
    return all(p.name in START_ARTEFACTS or p.suffix == ".log" for p in directory.iterdir())
