"""One config system: YAML files with ``_base_`` inheritance, ``key value`` CLI overrides, a typed schema.

``config/base.yaml`` is the schema: every key that exists has a default there, and the type of that
default is the type every other file and override must give. A key whose default is ``null`` takes a
string or null (paths, optional names). Its ``_limits_`` mapping gives the numeric keys their ranges.
Files name their parent(s) with ``_base_`` (a path relative to the file, or a list of them, merged left
to right); the child's keys win.
"""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from util import REPO
from util.common.atomic import write_output
from util.common.errors import UserError

SCHEMA_FILE = REPO / "config" / "base.yaml"
BASE_KEY = "_base_"
REPLACED_KEYS = {  # a key that is not in the schema but has a replacement -> what to write instead
    "keep_novel_as_background": "use 'novel_in_train: keep_as_background' for true, 'novel_in_train: drop_counted' "
                                "for false (or drop_any, the reference)",
}
LIMITS_KEY = "_limits_"
YAML11_WORDS = ("on", "off", "yes", "no")
"""Words YAML 1.1 (PyYAML) reads as booleans besides true/false."""
NOT_ABOVE = "not_above"  # in _limits_: the key may not exceed the value of the key named here


class ConfigError(UserError):
    """A config file or override is wrong (unknown key, wrong type, bad YAML, missing file)."""


class Config(dict):
    """A flat mapping of resolved settings with attribute access (``cfg.shot``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def copy(self) -> "Config":
        return Config(super().copy())

    def to_yaml(self) -> str:
        return yaml.safe_dump(dict(self), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path, header: str | None = None) -> Path:
        """Write the resolved config as YAML (recorded next to a run's outputs), ``header`` as a comment line above it
        (e.g. the process count), atomically: a failure leaves the previous file and is one line
        (:func:`util.common.atomic.write_output`)."""
        text = (f"# {header}\n" if header else "") + self.to_yaml()
        return write_output(path, text.encode(), "free disk space or choose a writable run directory")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; check the path (configs live in config/)")
    try:
        data = yaml.safe_load(path.read_text())  # safe_load: python/* tags are refused, nothing is called
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; a config is a YAML file of 'key: value' lines") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        if isinstance(err, yaml.constructor.ConstructorError):
            raise ConfigError(f"{path}:{where} holds a value that safe YAML loading refuses to build ({err.problem}); "
                              "a config holds only plain values (numbers, strings, lists, mappings)") from None
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)}); fix the syntax") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty; give its settings (at least '_base_: <parent>.yaml'), "
                          "or leave --config out to use the defaults of config/base.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of 'key: value' lines")
    return data


def _load_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, tuple[Any, Path]]:
    """Resolve a file and its ``_base_`` chain into ``key -> (value, file that set it)``."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: '_base_' chain loops back to this file; remove the cycle")
    data = _read_yaml(path)
    if path == SCHEMA_FILE:
        data.pop(LIMITS_KEY)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, tuple[Any, Path]] = {}
    for base in bases:
        merged.update(_load_tree((path.parent / base), seen + (path,)))
    merged.update({key: (value, path) for key, value in data.items()})
    return merged


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_type(key: str, value: Any, default: Any, where: str) -> Any:
    """Return ``value`` coerced to the schema type of ``default`` or raise a one-line ConfigError."""
    def fail() -> ConfigError:
        name = _type_name(default)
        article = "an" if name[0] in "aeiou" else "a"
        expected = "a string or null" if default is None else f"{article} {name} like {default!r}"
        return ConfigError(f"{where}: key '{key}' must be {expected}, got {_type_name(value)} {value!r}")

    if default is None:
        if value is None or isinstance(value, str):
            return value
        raise fail()
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in YAML11_WORDS:
            return value.strip().lower() in ("on", "yes")
        raise fail()
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        raise fail()
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' must be a string like {default!r}, got {value!r}: YAML reads an "
                              f"unquoted on/off/yes/no as true/false, so quote it ('{default}')")
        raise fail()
    if isinstance(default, list):
        if not isinstance(value, list):
            raise fail()
        if default:
            return [_check_type(f"{key}[{i}]", item, default[0], where) for i, item in enumerate(value)]
        return value
    if isinstance(default, dict):
        if isinstance(value, dict):
            return value
        raise fail()
    return value


def _suggest(key: str, known: Iterable[str]) -> str:
    if key in REPLACED_KEYS:
        return f" (it was replaced); {REPLACED_KEYS[key]}"
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else "; see config/base.yaml for the keys that exist"


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``["shot", "5", "base_lr", "0.01"]`` into ``{"shot": 5, "base_lr": 0.01}`` (values parsed as YAML)."""
    if len(pairs) % 2:
        raise ConfigError(f"overrides come as 'key value' pairs; '{pairs[-1]}' has no value")
    parsed: dict[str, Any] = {}
    for key, text in zip(pairs[::2], pairs[1::2]):
        try:
            parsed[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            parsed[key] = text
        if isinstance(parsed[key], bool) and text.strip().lower() in YAML11_WORDS:
            parsed[key] = text  # `amp off`: a word, not YAML 1.1's false (a boolean key still gets its check)
    return parsed


def schema() -> dict[str, Any]:
    """The defaults of every key (``config/base.yaml``)."""
    defaults = _read_yaml(SCHEMA_FILE)
    defaults.pop(LIMITS_KEY)
    return defaults


def limits() -> dict[str, dict[str, Any]]:
    """The ranges of the numeric keys (``_limits_`` in ``config/base.yaml``): ``min``/``max`` inclusive,
    ``above``/``below`` exclusive, ``min_items`` for lists (whose items take the bounds), ``not_above`` another key."""
    return _read_yaml(SCHEMA_FILE)[LIMITS_KEY]


def _range_text(bounds: Mapping[str, Any]) -> str:
    if "min" in bounds and "max" in bounds:
        return f"in {bounds['min']}..{bounds['max']}"
    words = {"min": ">=", "max": "<=", "above": ">", "below": "<"}
    return " and ".join(f"{words[k]} {bounds[k]}" for k in words if k in bounds)


def _check_range(key: str, value: Any, bounds: Mapping[str, Any], where: str) -> None:
    """Raise a one-line ConfigError if ``value`` (or an item of a list value) lies outside ``bounds`` (its numeric
    bounds; ``not_above``, a bound by another key, is checked once every key is known)."""
    if isinstance(value, list):
        if len(value) < bounds.get("min_items", 0):
            raise ConfigError(f"{where}: key '{key}' must list at least {bounds['min_items']} value(s), got {value!r}")
        for i, item in enumerate(value):
            _check_range(f"{key}[{i}]", item, bounds, where)
        return
    bounds = {k: v for k, v in bounds.items() if k != NOT_ABOVE}
    if not bounds:
        return
    inside = (value >= bounds.get("min", -math.inf) and value <= bounds.get("max", math.inf)
              and value > bounds.get("above", -math.inf) and value < bounds.get("below", math.inf))
    if not inside:
        raise ConfigError(f"{where}: key '{key}' must be {_range_text(bounds)}, got {value!r}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Load ``path`` (with its ``_base_`` chain) over the schema defaults, then apply overrides.

    Unknown keys, wrongly typed values and numbers outside their ``_limits_`` range raise
    :class:`ConfigError` naming the file (or "override") and the key, with a suggestion for near-miss key names.
    """
    defaults = schema()
    values: dict[str, tuple[Any, str]] = {k: (v, str(SCHEMA_FILE)) for k, v in defaults.items()}
    if path is not None:
        values.update({k: (v, str(src)) for k, (v, src) in _load_tree(Path(path)).items()})
    items = overrides.items() if isinstance(overrides, Mapping) else parse_overrides(overrides).items()
    values.update({k: (v, "override") for k, v in items})

    ranges = limits()
    resolved = Config()
    for key, (value, where) in values.items():
        if key not in defaults:
            raise ConfigError(f"{where}: unknown key '{key}'{_suggest(key, defaults)}")
        resolved[key] = _check_type(key, value, defaults[key], where)
        if key in ranges:
            _check_range(key, resolved[key], ranges[key], where)
    for key, bounds in ranges.items():
        other = bounds.get(NOT_ABOVE)
        if other is not None and resolved[key] > resolved[other]:
            place = " and ".join(dict.fromkeys(values[k][1] for k in (key, other)))
            raise ConfigError(f"{place}: key '{key}' ({resolved[key]!r}) must not exceed '{other}' "
                              f"({resolved[other]!r}); a range is written low to high")
    return resolved
