"""The typed config: one Hydra structured config (a dataclass) per group of the shared `conf/` tree,
with the check of each knob next to its field. YAML files under `conf/` hold presets only: the
defaults live in the dataclasses.

Each package registers the schemas of its groups under the entry-point group
``ilora_dllm2rec.config_schemas`` (a list of :class:`Schema`), so every command composes the whole
tree without importing the packages above it. A field is declared with :func:`checked` (its range,
checked before any work: one ``error:`` line and exit code 2), :func:`alias_of` (an earlier name
still accepted, e.g. the earlier guide's ``teacher.distill_lambda``) or :func:`retired` (a key that
is gone, refused with a message saying what replaced it). Cross-field rules are a group's
``check_group(values, prefix)`` classmethod.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recdata.errors import UserError

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "ilora_dllm2rec.config_schemas"
_ABSENT = object()


# -- checks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    expected: str  # completes "<key> must be ..."
    ok: Callable[[Any], bool]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int, *, also: tuple = ()) -> Check:
    """An integer >= low, or one of `also` (e.g. -1 for "all", None for "unset")."""
    extra = "".join(f" or {a}" for a in also)
    return Check(
        f"an integer >= {low}{extra}",
        lambda v: (_is_int(v) and v >= low) or any(v is a or (_is_int(v) and v == a) for a in also),
    )


def optional_integer(low: int) -> Check:
    return Check(f"null or an integer >= {low}", lambda v: v is None or (_is_int(v) and v >= low))


def number(
    low: float,
    high: float | None = None,
    *,
    strict_low: bool = False,
    strict_high: bool = False,
    nullable: bool = False,
) -> Check:
    upper = "inf)" if high is None else f"{high:g}" + (")" if strict_high else "]")
    expected = f"a number in {'(' if strict_low else '['}{low:g}, {upper}" + (
        " or null" if nullable else ""
    )

    def ok(v) -> bool:
        if v is None:
            return nullable
        if not _is_number(v) or v < low or (strict_low and v == low):
            return False
        return high is None or v < high or (v == high and not strict_high)

    return Check(expected, ok)


def at_least(low: float, *, strict: bool = False) -> Check:
    """A finite number >= low (> low when strict)."""
    return Check(
        f"a number {'>' if strict else '>='} {low:g}",
        lambda v: _is_number(v) and (v > low if strict else v >= low),
    )


def number_or(word: str, low: float) -> Check:
    """A number >= low, or the literal `word` (e.g. "auto")."""
    return Check(
        f"a number >= {low:g} or {word}", lambda v: v == word or (_is_number(v) and v >= low)
    )


def one_of(choices: tuple[str, ...]) -> Check:
    return Check(f"one of {', '.join(choices)}", lambda v: v in choices)


BOOLEAN = Check("true or false", lambda v: isinstance(v, bool))
# a fraction of the batches (0, 1] or a count of batches >= 1 (Lightning's convention)
FRACTION_OR_COUNT = Check(
    "a fraction in (0, 1] or an integer count >= 1",
    lambda v: (_is_int(v) and v >= 1) or (_is_number(v) and 0 < v <= 1),
)
POSITIVE_INT_LIST = Check(
    "a non-empty list of integers >= 1",
    lambda v: isinstance(v, list) and bool(v) and all(_is_int(k) and k >= 1 for k in v),
)
NON_NEGATIVE_NUMBER_LIST = Check(
    "a non-empty list of numbers >= 0",
    lambda v: isinstance(v, list) and bool(v) and all(_is_number(x) and x >= 0 for x in v),
)


# -- fields ---------------------------------------------------------------------------------------
def checked(default: Any, check: Check) -> Any:
    """A schema field whose value must pass `check`."""
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"check": check}
        )
    return dataclasses.field(default=default, metadata={"check": check})


def alias_of(name: str) -> Any:
    """An earlier name of the field `name` of the same group: still accepted on the command line
    and in the saved config of an older run, moved to `name` before the task runs."""
    return dataclasses.field(default=None, metadata={"alias_of": name})


def retired(message: str) -> Any:
    """A key that is gone: setting it is refused with `message` (what to set instead)."""
    return dataclasses.field(default=None, metadata={"retired": message})


# -- registry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schema:
    """The dataclass `node` of the config group `group` ("" = the root). It is stored as
    `schema/<name>` (out of the group's own options), and a group's YAML presets extend it:
    `defaults: [/schema/<name>@_here_, _self_]`."""

    group: str
    name: str
    node: type


@functools.cache
def registered_schemas() -> tuple[Schema, ...]:
    schemas: list[Schema] = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        schemas.extend(point.load())
    return tuple(schemas)


@functools.cache
def register_schemas() -> None:
    """Put every registered schema in Hydra's ConfigStore (once per process)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for schema in registered_schemas():
        store.store(group="schema", name=schema.name, node=schema.node)


def group_fields() -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every field of every registered group schema (each key once)."""
    seen: set[str] = set()
    for schema in registered_schemas():
        for f in dataclasses.fields(schema.node):
            key = f"{schema.group}.{f.name}" if schema.group else f.name
            if key not in seen:
                seen.add(key)
                yield key, f


def field_check(key: str) -> Check | None:
    return next(
        (f.metadata["check"] for k, f in group_fields() if k == key and "check" in f.metadata), None
    )


# -- what a command runs with ----------------------------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    """Raise a one-line UserError for the first knob outside its range, then for the first broken
    cross-field rule of a group. Keys absent from the config are skipped."""
    for key, f in group_fields():
        value = _select(cfg, key)
        if value is _ABSENT:
            continue
        if "retired" in f.metadata and value is not None:
            raise UserError(f"{key}={value} is no longer used: {f.metadata['retired']}")
        check = f.metadata.get("check")
        if check is not None and not check.ok(value):
            raise UserError(f"{key} must be {check.expected}, got {value!r}")
    for schema in registered_schemas():
        rule = getattr(schema.node, "check_group", None)
        node = (
            _select(cfg, schema.group)
            if schema.group
            else OmegaConf.to_container(cfg, resolve=True)
        )
        if rule is not None and isinstance(node, dict):
            rule(node, f"{schema.group}." if schema.group else "")


def check_instance(instance: Any, prefix: str) -> None:
    """The same checks for a schema dataclass built in code (e.g. a teacher rebuilt from its
    card)."""
    values = dataclasses.asdict(instance)
    for f in dataclasses.fields(instance):
        check = f.metadata.get("check")
        if check is not None and not check.ok(values[f.name]):
            raise UserError(f"{prefix}{f.name} must be {check.expected}, got {values[f.name]!r}")
    rule = getattr(type(instance), "check_group", None)
    if rule is not None:
        rule(values, prefix)


def check_monitor(cfg: DictConfig) -> None:
    """train.monitor names a metric the validation of this run computes (used by every trainer)."""
    from runkit.metrics import CANDIDATE_METRIC

    names = [f"{m}@{k}" for k in cfg.eval.ks for m in ("hr", "ndcg")]
    names += [CANDIDATE_METRIC] if cfg.eval.num_candidates else []
    if cfg.train.monitor not in names:
        raise UserError(
            f"train.monitor={cfg.train.monitor} is not a validation metric; with "
            f"eval.ks={list(cfg.eval.ks)} choose one of {', '.join(names)}"
        )


def canonical_config(cfg: DictConfig) -> DictConfig:
    """A plain (untyped) copy of the composed config with every earlier name moved to its field
    (and dropped), so config.yaml and a resume see one name per knob."""
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for key, f in group_fields():
        target = f.metadata.get("alias_of")
        value = _select(plain, key)
        if target is None or value is _ABSENT:
            continue
        group, _, name = key.rpartition(".")
        if value is not None:
            new_key = f"{group}.{target}" if group else target
            log.info("%s is the earlier name of %s: using %s=%s", key, new_key, new_key, value)
            OmegaConf.update(plain, new_key, value, force_add=True)
        parent = OmegaConf.select(plain, group) if group else plain
        parent.pop(name)
    return plain


def describe_override_error(error: Exception) -> str | None:
    """`<key> must be <expected>, got <value>` for an override Hydra could not merge into its typed
    field (e.g. `train.max_epochs=abc`), or None for any other composition error."""
    cause = error.__cause__
    key, value = getattr(cause, "full_key", None), getattr(cause, "value", _ABSENT)
    check = field_check(key) if key else None
    if check is None or value is _ABSENT:
        return None
    return f"{key} must be {check.expected}, got {_parsed(value)!r}"


def _parsed(value):
    """An override's value as the YAML grammar reads it ("2.5" -> 2.5, "abc" -> "abc")."""
    if not isinstance(value, str):
        return value
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _select(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
