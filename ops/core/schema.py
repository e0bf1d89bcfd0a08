"""A small typed validation engine: frozen dataclass models checked against their type
hints, with every problem reported at once as one `FILE: KEY.PATH: PROBLEM` line.

ops/core/config.py declares the schema of `ops.toml` with it. Standard library only: every
process reads its config, and none should carry a validation library for that.

- `Model`: the base class. A subclass is a frozen, keyword-only dataclass. Building one
  directly (`RetryConfig(max_s=5.0)`, `dataclasses.replace(...)`) validates the values
  and raises `ConfigError` naming the class; `Model.from_mapping` / `validate` check
  parsed TOML. A model's `_cross_check` (cross-field rules) runs only once all of its own
  fields are valid, and reports keys relative to the model.
- Field types: bool, int, float, str, Decimal, Any, Literal[...], list[X], dict[str, X],
  X | None and nested models, strictly: no coercion (a string is not a number, a bool is
  not an int), except that an int is a valid float and an int or float a valid Decimal
  (via its text, so 0.1 stays 0.1); inf and nan are refused.
- Constraints, as `Annotated` metadata: `Bounds` (gt/ge/lt/le), `MinLen`, `Pattern`,
  `Before` (transforms the raw value first) and `After` (a check raising `Invalid`).

Problems come in declaration order, depth first: a model's fields, then its unknown keys
(with a close known one suggested, the value never echoed: it may be a pasted secret),
then, only when all of that is clean, its cross-field rules.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from types import NoneType, UnionType
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    Self,
    Union,
    dataclass_transform,
    get_args,
    get_origin,
    get_type_hints,
)

# --------------------------------------------------------------------------- errors


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file: where (dotted key path, may be empty) and what."""

    path: str
    message: str

    def render(self, source: str) -> str:
        # A key may hold control or bidi characters (a hostile `[accounts."x\u202e"]`):
        # shown escaped, so the line cannot hide or reorder what follows it.
        path = "".join(c if c.isprintable() else repr(c)[1:-1] for c in self.path)
        where = f"{source}: {path}" if path else source
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Invalid configuration. `str()` is one `FILE: KEY.PATH: PROBLEM` line per problem."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(p.render(source) for p in self.problems))


class Invalid(ValueError):
    """Raised by `After` / `Before` checks; its text is the problem's message."""


def show(value: object) -> str:
    """How a rejected value is quoted in messages (short; tables and lists not dumped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return num(value)


def num(value: object) -> str:
    """Numbers as people write them in TOML: 20.0 -> 20, 0.5 -> 0.5."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return str(value)


Loc = tuple[str | int, ...]


def _join(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class _Issue:
    loc: Loc
    message: str
    rel: str = ""  # a cross-field rule's key, relative to the model at `loc`

    def problem(self) -> Problem:
        base = _join(self.loc)
        rel = self.rel
        return Problem(f"{base}.{rel}" if base and rel else base or rel, self.message)


# --------------------------------------------------------------------------- constraints


@dataclasses.dataclass(frozen=True, slots=True)
class Bounds:
    """Numeric bounds; the message quotes the value as given."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def problem(self, value: Any, raw: object) -> str | None:
        if self.le is not None and value > self.le:
            return f"must be at most {num(self.le)} (got {show(raw)})"
        if self.lt is not None and value >= self.lt:
            return f"must be less than {num(self.lt)} (got {show(raw)})"
        if self.ge is not None and value < self.ge:
            return f"must be at least {num(self.ge)} (got {show(raw)})"
        if self.gt is not None and value <= self.gt:
            return f"must be greater than {num(self.gt)} (got {show(raw)})"
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class MinLen:
    """Least length of a string or list."""

    least: int

    def problem(self, value: Any, raw: object) -> str | None:
        if len(value) >= self.least:
            return None
        if isinstance(value, str) or self.least == 1:
            return "must not be empty"
        return f"needs {self.least}+ items"


@dataclasses.dataclass(frozen=True, slots=True)
class Pattern:
    """A regular expression the whole string matches (`^...$`; `$` is the end of the text,
    a trailing newline does not match it). The message quotes the expression."""

    regex: str

    def __post_init__(self) -> None:
        if not (self.regex.startswith("^") and self.regex.endswith("$")):
            raise ValueError(f"pattern must be anchored with ^...$: {self.regex}")
        re.compile(self.regex)

    def problem(self, value: Any, raw: object) -> str | None:
        if re.fullmatch(self.regex, value):
            return None
        return f"must match {self.regex} (got {show(raw)})"


@dataclasses.dataclass(frozen=True, slots=True)
class Before:
    """Transforms the raw value before its type is checked (may raise `Invalid`)."""

    fn: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class After:
    """Checks a value of the right type: returns it (or its replacement) or raises
    `Invalid` with the message."""

    fn: Callable[[Any], Any]


# --------------------------------------------------------------------------- validators

#: A validator: (value, where, problems found so far) -> the valid value, or _FAIL after
#: appending what is wrong.
_Validator = Callable[[Any, Loc, list[_Issue]], Any]
_FAIL: Any = object()


def _expect(words: str, check: Callable[[Any], bool]) -> _Validator:
    def validate(value: Any, loc: Loc, issues: list[_Issue]) -> Any:
        if check(value):
            return value
        issues.append(_Issue(loc, f"expected {words} (got {show(value)})"))
        return _FAIL

    return validate


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: Any, loc: Loc, issues: list[_Issue]) -> Any:
    """A float from a float or an int (TOML), or, built in code, any number but a bool
    (Decimal included); never from a string."""
    kind = type(value)
    if kind is not bool and (hasattr(kind, "__float__") or hasattr(kind, "__index__")):
        try:
            result = float(value)
        except (OverflowError, ValueError):  # an int beyond any float, a signalling NaN
            pass
        else:
            if math.isfinite(result):
                return result
            issues.append(_Issue(loc, f"must be a finite number (got {show(value)})"))
            return _FAIL
    issues.append(_Issue(loc, f"expected a number (got {show(value)})"))
    return _FAIL


def _decimal(value: Any, loc: Loc, issues: list[_Issue]) -> Any:
    """TOML numbers (int or float) to Decimal via their text, so 0.1 stays 0.1."""
    if isinstance(value, Decimal):
        result = value
    elif _is_number(value):
        result = Decimal(str(value))
    else:
        issues.append(_Issue(loc, f"expected a number (got {show(value)})"))
        return _FAIL
    if not result.is_finite():
        issues.append(_Issue(loc, f"must be a finite number (got {show(value)})"))
        return _FAIL
    return result


def _any(value: Any, loc: Loc, issues: list[_Issue]) -> Any:
    return value


_SCALARS: dict[Any, _Validator] = {
    bool: _expect("true or false", lambda v: isinstance(v, bool)),
    int: _expect("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    str: _expect("a string", lambda v: isinstance(v, str)),
    float: _float,
    Decimal: _decimal,
    Any: _any,
}


def _literal(choices: tuple[Any, ...]) -> _Validator:
    shown = [repr(c) for c in choices]
    expected = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"

    def validate(value: Any, loc: Loc, issues: list[_Issue]) -> Any:
        for choice in choices:
            if type(value) is type(choice) and value == choice:
                return choice
        issues.append(_Issue(loc, f"must be one of {expected} (got {show(value)})"))
        return _FAIL

    return validate


def _optional(inner: _Validator) -> _Validator:
    def validate(value: Any, loc: Loc, issues: list[_Issue]) -> Any:
        return None if value is None else inner(value, loc, issues)

    return validate


def _list(item: _Validator) -> _Validator:
    def validate(value: Any, loc: Loc, issues: list[_Issue]) -> Any:
        if not isinstance(value, list):
            issues.append(_Issue(loc, f"expected a list (got {show(value)})"))
            return _FAIL
        out = [item(v, (*loc, i), issues) for i, v in enumerate(value)]
        return _FAIL if any(v is _FAIL for v in out) else out

    return validate


def _dict(key: _Validator, item: _Validator) -> _Validator:
    def validate(value: Any, loc: Loc, issues: list[_Issue]) -> Any:
        if not isinstance(value, dict):
            issues.append(_Issue(loc, f"expected a table (got {show(value)})"))
            return _FAIL
        out: dict[Any, Any] = {}
        failed = False
        for k, v in value.items():
            where = (*loc, str(k))
            checked_key = key(k, where, issues)
            checked = item(v, where, issues)
            if checked_key is _FAIL or checked is _FAIL:
                failed = True
            else:
                out[checked_key] = checked
        return _FAIL if failed else out

    return validate


def _annotated(base: _Validator, metadata: Sequence[object]) -> _Validator:
    befores = [m.fn for m in metadata if isinstance(m, Before)]
    rules = [m for m in metadata if isinstance(m, Bounds | MinLen | Pattern)]
    afters = [m.fn for m in metadata if isinstance(m, After)]

    def validate(raw: Any, loc: Loc, issues: list[_Issue]) -> Any:
        try:
            value = raw
            for before in befores:
                value = before(value)
            value = base(value, loc, issues)
            if value is _FAIL:
                return _FAIL
            for rule in rules:
                if (message := rule.problem(value, raw)) is not None:
                    issues.append(_Issue(loc, message))
                    return _FAIL
            for after in afters:
                value = after(value)
        except Invalid as exc:
            issues.append(_Issue(loc, str(exc)))
            return _FAIL
        return value

    return validate


def _compile(tp: Any) -> _Validator:
    """The validator of one type hint."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _annotated(_compile(args[0]), tp.__metadata__)
    if origin in (Union, UnionType):
        inner = [a for a in args if a is not NoneType]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"only `X | None` unions are supported, not {tp!r}")
        return _optional(_compile(inner[0]))
    if origin is Literal:
        return _literal(args)
    if origin is list:
        return _list(_compile(args[0]))
    if origin is dict:
        return _dict(_compile(args[0]), _compile(args[1]))
    if isinstance(tp, type) and issubclass(tp, Model):
        return _model(tp)
    if tp in _SCALARS:
        return _SCALARS[tp]
    raise TypeError(f"unsupported field type {tp!r}")


# --------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    validate: _Validator
    default: Any  # dataclasses.MISSING: none
    factory: Any  # dataclasses.MISSING: none


_SPECS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type[Model]) -> tuple[_Field, ...]:
    """The fields of a model with their validators, built on first use (so the hints of
    models declared further down the module resolve)."""
    spec = _SPECS.get(cls)
    if spec is None:
        hints = get_type_hints(cls, include_extras=True)
        spec = tuple(
            _Field(f.name, _compile(hints[f.name]), f.default, f.default_factory)
            for f in dataclasses.fields(cls)
        )
        _SPECS[cls] = spec
    return spec


def _fill(obj: Model, data: Mapping[str, Any], loc: Loc, issues: list[_Issue]) -> bool:
    """Validate `data` into the fields of `obj` (fresh, unset); False if anything is wrong.
    Cross-field rules run only when every field is valid."""
    start = len(issues)
    fields = _fields(type(obj))
    for field in fields:
        if field.name in data:
            value = field.validate(data[field.name], (*loc, field.name), issues)
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.factory is not dataclasses.MISSING:
            value = field.factory()
        else:
            issues.append(_Issue((*loc, field.name), "field required"))
            continue
        if value is not _FAIL:
            object.__setattr__(obj, field.name, value)
    names = [field.name for field in fields]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            issues.append(_Issue(loc, f"unknown key '{key}'{hint}"))
    if len(issues) > start:
        return False
    issues += [_Issue(loc, message, rel) for rel, message in obj._cross_check()]
    return len(issues) == start


def _model(cls: type[Model]) -> _Validator:
    def validate(value: Any, loc: Loc, issues: list[_Issue]) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            issues.append(_Issue(loc, f"expected a table (got {show(value)})"))
            return _FAIL
        obj = cls.__new__(cls)
        return obj if _fill(obj, value, loc, issues) else _FAIL

    return validate


@dataclass_transform(
    kw_only_default=True, frozen_default=True, field_specifiers=(dataclasses.field,)
)
class Model:
    """Base of the schema's models: each subclass is a frozen keyword-only dataclass whose
    construction validates (raising `ConfigError`). Mutable defaults take
    `dataclasses.field(default_factory=...)`; model defaults are shared (frozen)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True, init=False)(cls)

    def __init__(self, **values: Any) -> None:
        issues: list[_Issue] = []
        if not _fill(self, values, (), issues):
            raise ConfigError(type(self).__name__, [i.problem() for i in issues])

    def _cross_check(self) -> Iterable[tuple[str, str]]:
        """Cross-field rules: (key relative to this model, message) per problem."""
        return ()

    @classmethod
    def validate(cls, data: Mapping[str, Any]) -> tuple[Self | None, list[Problem]]:
        """Parsed TOML data -> (the model, []) or (None, every problem in order)."""
        issues: list[_Issue] = []
        obj = cls.__new__(cls)
        if _fill(obj, data, (), issues):
            return obj, []
        return None, [i.problem() for i in issues]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str | None = None) -> Self:
        """Parsed TOML data -> the model; raises ConfigError naming `source` (default: the
        class) with every problem."""
        obj, problems = cls.validate(data)
        if obj is None:
            raise ConfigError(source or cls.__name__, problems)
        return obj


_ZERO = timedelta(0)


def to_json(value: Any) -> Any:
    """A JSON-ready copy: models and tables to dicts, Decimal to its text, date/times to
    ISO 8601 (UTC as `Z`), inf and nan to None."""
    if isinstance(value, Model):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        text = value.isoformat()
        return text.removesuffix("+00:00") + "Z" if value.utcoffset() == _ZERO else text
    if isinstance(value, date | time):
        return value.isoformat()
    return value
