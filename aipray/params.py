"""Declaring config fields and checking them: defaults, allowed ranges and sweep axes, kept next
to each algorithm, and the :class:`Settings` base class that enforces them whenever a config is
built, from Python or from the sweep YAML."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import itertools
import math
import types
import typing
from typing import Any

_FILE_CHECKS = contextvars.ContextVar("file_checks", default=True)


@contextlib.contextmanager
def without_file_checks():
    """Parse configs that name files this machine does not hold (a cost estimate, a plan): inside
    the block the parser skips ``file_checks``; every other check still runs."""
    token = _FILE_CHECKS.set(False)
    try:
        yield
    finally:
        _FILE_CHECKS.reset(token)


class ConfigError(ValueError):
    """A bad config; the message is one line: ``where: key: value ... allowed``."""


class SettingError(ConfigError):
    """One setting of a config is not allowed. Carries ``key``, ``value`` (as given) and
    ``allowed`` so that the sweep parser can name the YAML location instead of the class."""

    def __init__(self, where: str, key: str, value: Any, allowed: str) -> None:
        self.where, self.key, self.value, self.allowed = where, key, value, allowed
        super().__init__(self.at(where))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Ray sends errors between processes)
        return type(self), (self.where, self.key, self.value, self.allowed)

    def at(self, where: str) -> str:
        """The one-line message with ``where`` (class name or YAML location) before the key."""
        return f"{where}.{self.key}: {self.value!r} is not allowed; expected {self.allowed}"


def param(
    default: Any,
    *,
    axis: bool = False,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    doc: str = "",
    keyed_at_default: bool = True,
    labelled: bool = False,
) -> Any:
    """A dataclass field with validation metadata.

    ``axis=True`` lets the sweep YAML give a list of values for the field: the grid then has one
    point per value (ε of an attack, JPEG quality, embedding length).

    ``keyed_at_default=False`` leaves the field out of the config's store key
    (:func:`key_fields`) while it holds its default: a field added to a config later keeps the
    keys of everything stored before it existed.

    ``labelled=True`` shows a field that is not an axis in its component's label while it differs
    from its default (:attr:`aipray.grid.Component.label`): a setting a sub-grid may change,
    which must tell two trials apart in tables.
    """
    meta = {
        "axis": axis,
        "min": min,
        "max": max,
        "choices": choices,
        "doc": doc,
        "keyed_at_default": keyed_at_default,
        "labelled": labelled,
    }
    return dataclasses.field(default=default, metadata=meta)


def key_fields(config: Any) -> dict[str, Any]:
    """The config as the dict its store keys hash: ``dataclasses.asdict`` without the fields
    declared ``keyed_at_default=False`` that hold their default."""
    out = dataclasses.asdict(config)
    for f in dataclasses.fields(config):
        if not f.metadata.get("keyed_at_default", True) and out[f.name] == f.default:
            del out[f.name]
    return out


class Settings:
    """Base class of every config dataclass (``@dataclass(frozen=True) class X(Settings)``).

    Building an instance coerces and checks each field against its type hint and its
    :func:`param` metadata (bounds, choices), stores the coerced value (``32`` becomes ``32.0``
    for a float field, so config hashes do not depend on how a number was written), then runs
    :meth:`cross_checks` (constraints between fields). The first problem raises a
    :class:`SettingError`: ``Class.key: value is not allowed; expected ...``.

    Fields typed as another dataclass must be given an instance (the sweep parser builds nested
    sections itself). A subclass with its own ``__post_init__`` calls ``super().__post_init__()``
    first, then adjusts the checked values (e.g. makes a path absolute); its ``cross_checks``
    therefore see checked values before that adjustment.

    Checks of the outside world (does the file a path names exist?) are not part of building a
    config: a class lists them in ``file_checks()``, which the sweep parser runs after building,
    so a config can be built on a machine that does not hold its data.
    """

    def __post_init__(self) -> None:
        check_settings(self)

    def cross_checks(self) -> list[tuple[str, object, str]]:
        """``(key, value, allowed)`` for each constraint between fields that fails."""
        return []

    def file_checks(self) -> list[tuple[str, object, str]]:
        """``(key, value, allowed)`` for each file or folder the config names that is missing or
        unreadable; run by the sweep parser, not when the config is built."""
        return []


def check_settings(config: Any) -> None:
    """Coerce and check every field of the dataclass instance ``config`` in place, then run its
    ``cross_checks()`` (if any); raises :class:`SettingError` on the first problem. What
    :meth:`Settings.__post_init__` does; the sweep parser also applies it to config classes that
    do not inherit :class:`Settings` yet."""
    cls = type(config)
    for f, hint in _fields(cls):
        value = getattr(config, f.name)
        if _is_dataclass_type(hint):
            if not isinstance(value, hint):
                raise SettingError(cls.__name__, f.name, value, _type_names(hint))
            continue
        checked = check_value(f, hint, value)
        if checked is None:
            raise SettingError(cls.__name__, f.name, value, describe_allowed(f, hint))
        if checked[0] is not value:
            object.__setattr__(config, f.name, checked[0])
    for key, value, expected in getattr(config, "cross_checks", list)():
        raise SettingError(cls.__name__, key, value, expected)


@functools.cache
def _fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _union_args(hint: Any) -> tuple[Any, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def fmt(value: Any) -> str:
    """A number as written in labels and messages: ``32.0`` → ``32``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe_allowed(f: dataclasses.Field, hint: Any) -> str:
    """What a field accepts, in words: ``a number in 0..255 (or a list of them)``."""
    meta = f.metadata
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    kinds = _type_names(hint)
    lo, hi = meta.get("min"), meta.get("max")
    rng = ""
    if lo is not None and hi is not None:
        rng = f" in {fmt(lo)}..{fmt(hi)}"
    elif lo is not None:
        rng = f" >= {fmt(lo)}"
    elif hi is not None:
        rng = f" <= {fmt(hi)}"
    suffix = " (or a list of them)" if meta.get("axis") else ""
    return f"{kinds}{rng}{suffix}"


def _type_names(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    parts = [
        names.get(a, "null" if a is type(None) else getattr(a, "__name__", str(a)))
        for a in _union_args(hint)
    ]
    return " or ".join(parts)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    args = _union_args(hint)
    if value is None:
        return (type(None) in args, None)
    if isinstance(value, bool):
        return (bool in args, value)
    if int in args and isinstance(value, int):
        return True, value
    if float in args and isinstance(value, int | float):
        return math.isfinite(float(value)), float(value)
    if float in args and isinstance(value, str):
        # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number) and value.strip().lower() not in ("nan", "inf", "infinity"):
                return True, number
    if str in args and isinstance(value, str):
        return True, value
    return False, value


def check_value(f: dataclasses.Field, hint: Any, value: Any) -> tuple[Any] | None:
    """``(coerced,)`` when ``value`` is allowed for the field (type, choices, bounds), else
    ``None``. Ints become floats for float fields, and so do YAML 1.1 strings such as ``1e-4``;
    a bool is never a number."""
    ok, coerced = _coerce(value, hint)
    meta = f.metadata
    if ok and coerced is not None:
        if meta.get("choices") and coerced not in meta["choices"]:
            ok = False
        if isinstance(coerced, int | float) and not isinstance(coerced, bool):
            if meta.get("min") is not None and coerced < meta["min"]:
                ok = False
            if meta.get("max") is not None and coerced > meta["max"]:
                ok = False
    return (coerced,) if ok else None


# --- generic dataclass construction -------------------------------------------------------------
def build_dataclass(cls: type, raw: Any, where: str, *, allow_axes: bool = False):
    """Build ``cls`` from a YAML mapping. Returns ``(instances, axis_values_per_instance)``: one
    instance unless ``allow_axes`` and axis fields were given lists (then one per combination).

    Values are checked by building the instances (:class:`~aipray.params.Settings`); their
    errors are reported at ``where`` instead of the class name. Then each instance's
    ``file_checks()`` run (files and folders the config names must exist).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {raw!r} is not allowed; expected a mapping of settings")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, raw)) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(fields)) or '(none)'}"
        )
    scalar: dict[str, Any] = {}
    axes: list[tuple[str, list[Any]]] = []
    for key, value in raw.items():
        f, hint = fields[key], hints[key]
        if dataclasses.is_dataclass(hint):
            scalar[key] = build_dataclass(hint, value, f"{where}.{key}")[0][0]
        elif isinstance(value, list):
            if not (allow_axes and f.metadata.get("axis")):
                raise ConfigError(
                    f"{where}.{key}: a list {value!r} is not allowed; "
                    f"expected {describe_allowed(f, hint)}"
                )
            if not value:
                raise ConfigError(f"{where}.{key}: an empty list is not allowed; give >= 1 value")
            axes.append((key, value))
        else:
            scalar[key] = value
    out = []
    combos: list[tuple[tuple[str, Any], ...]] = []
    for picks in itertools.product(*(range(len(values)) for _, values in axes)):
        chosen = {key: values[i] for (key, values), i in zip(axes, picks, strict=True)}
        inst = _build(cls, {**scalar, **chosen}, where)
        out.append(inst)
        combos.append(tuple((key, getattr(inst, key)) for key, _ in axes))
    for n, (key, values) in enumerate(axes):
        if len({combo[n][1] for combo in combos}) != len(values):
            raise ConfigError(f"{where}.{key}: {values!r} repeats a value; give each once")
    return out, combos


def _build(cls: type, settings: dict[str, Any], where: str) -> Any:
    """``cls(**settings)`` with a problem reported at ``where``, then its file checks."""
    try:
        inst = cls(**settings)
    except SettingError as err:
        raise SettingError(where, err.key, err.value, err.allowed) from None
    if _FILE_CHECKS.get():
        for key, value, expected in getattr(inst, "file_checks", list)():
            raise SettingError(where, key, value, expected)
    return inst
