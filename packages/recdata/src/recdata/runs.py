"""Run directories and the Hydra entry points shared by every command.

A run directory is `result/result_{YYYYmmdd_HHMMSS}/` (Hydra's run dir, created exclusively: a
second run started in the same second gets `..._1`): the resolved config, TensorBoard logs,
checkpoints/best|last (the checkpoint contract), Lightning's last.ckpt, the metrics files and,
written last, `run_complete.json`. Commands print `run_dir: <path>` as their last line.

Every entry point: turns a config error (unknown key or group, a bad numeric knob) into one
`error:` line and exit code 2, continues `train.resume=<run_dir>` with that run's own saved
config, and leaves no run directory behind when it fails with a user error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
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

from recdata.atomic import write_json
from recdata.checkpoint import CARD_FILE, read_card
from recdata.errors import CheckpointError, UserError, report_and_exit

log = logging.getLogger(__name__)
CONF_ENV = "ILORA_CONF_DIR"
CONFIG_FILE, COMPLETE_FILE, TEST_METRICS_FILE = "config.yaml", "run_complete.json", "test_metrics.json"
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

        hydra_main = hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(guarded)

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
                        report_and_exit(UserError(one_line(error)))
                    if full_error:
                        raise
                    traceback.print_exc()  # a bug in the task: its traceback and exit 1, as Hydra does
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

    from recdata.config import check_config

    try:  # an interpolation that cannot resolve (e.g. a missing ${oc.env:...}) is a config error
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise UserError(f"config {error.full_key}: {str(error).splitlines()[0]}") from None
    if OmegaConf.select(cfg, "train.resume"):
        cfg = resumed_config(cfg)
    check_config(cfg)
    return cfg


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
        what = "no such directory" if not run_dir.is_dir() else f"not a run directory (no {CONFIG_FILE})"
        raise UserError(f"train.resume={run_dir}: {what}")
    saved = OmegaConf.load(run_dir / CONFIG_FILE)
    hydra_cfg = HydraConfig.get()
    choices, own_choices = hydra_cfg.runtime.choices, _original_choices(run_dir)
    for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
        key = override.key_or_group
        if key in choices:
            if own_choices.get(key) != choices[key]:
                raise UserError(f"train.resume: {override.input_line} changes the config group {key!r} of {run_dir} "
                                f"(it ran with {key}={own_choices.get(key)}); override single keys instead")  # fmt: skip
        elif override.is_delete():
            _delete_key(saved, key)
        else:
            value = OmegaConf.select(cfg, key)
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            OmegaConf.update(saved, key, value, merge=False, force_add=True)
    OmegaConf.update(saved, "train.resume", str(run_dir), force_add=True)
    OmegaConf.set_struct(saved, True)
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


# -- complete runs and "the newest run of a kind" ------------------------------------------------
def mark_incomplete(run_dir: Path) -> None:
    """Called when a run starts (or resumes): until it ends, no lookup may pick it."""
    (Path(run_dir) / COMPLETE_FILE).unlink(missing_ok=True)


def mark_complete(run_dir: Path, **details) -> None:
    """Written last, after the test metrics: the run's checkpoints and figures are final."""
    finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write_json(Path(run_dir) / COMPLETE_FILE, {"finished_at": finished, **details})


def incomplete_reason(run_dir: Path) -> str | None:
    """Why `run_dir` is not a complete run, or None when it is."""
    for name, why in ((TEST_METRICS_FILE, "no test metrics"), (COMPLETE_FILE, "no completion marker")):
        if not (Path(run_dir) / name).is_file():
            return f"{why}: killed, failed or still running"
    return None


def find_newest_checkpoint(result_dir: Path, kinds: tuple[str, ...], which: str = "best") -> Path:
    """The `checkpoints/<which>` directory of the newest complete run under `result_dir` of these
    kinds. Incomplete runs (killed, failed, still running) are skipped and logged."""
    found: list[tuple[str, float, Path]] = []
    skipped: list[str] = []
    for card_path in Path(result_dir).glob(f"**/checkpoints/{which}/{CARD_FILE}"):
        run_dir = card_path.parents[2]
        try:
            card = read_card(card_path.parent)
        except CheckpointError as error:
            skipped.append(f"{run_dir} ({error})")
            continue
        if card["kind"] not in kinds:
            continue
        if reason := incomplete_reason(run_dir):
            skipped.append(f"{run_dir} ({reason})")
            continue
        found.append((card.get("created_at", ""), card_path.stat().st_mtime, card_path.parent))
    if skipped:
        log.warning("looking for the newest %s run: skipped %d: %s", " or ".join(kinds), len(skipped), "; ".join(sorted(skipped)))
    if not found:
        hint = f" (skipped {len(skipped)} incomplete or unreadable)" if skipped else ""
        raise CheckpointError(f"no complete {' or '.join(kinds)} run found under {result_dir}/{hint}; train one first")
    return max(found)[2]


def checkpoint_or_newest(cfg: DictConfig, key: str, kind: str) -> Path:
    """The checkpoint at config key `key`, or when unset the newest complete run of `kind`
    (logged, and written into `cfg` so config.yaml and a resume name exactly that checkpoint)."""
    configured = OmegaConf.select(cfg, key)
    if configured:
        return Path(configured)
    path = find_newest_checkpoint(Path(cfg.paths.result_dir), (kind,))
    log.info("%s not set: using the newest %s checkpoint %s", key, kind, path)
    OmegaConf.update(cfg, key, str(path))
    return path
