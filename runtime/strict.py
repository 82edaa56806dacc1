"""Strict parsing of JSON into typed dataclasses: the one parser behind the workbench config and the
bundle manifest.

An unknown key fails naming its path and the nearest valid key; a missing required key or a wrong type
names the path and the expected type. Nothing is silently fixed: a value is used as written or refused.
A field with a default is optional; one without is required.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Union


class SchemaError(ValueError):
    """JSON that does not fit its typed record; the message names the key path."""


def type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {type_name(args[0])}" if args else "list"
    if dataclasses.is_dataclass(tp) or tp is dict or origin is dict:
        return "object"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def nearest_key(key: str, known: typing.Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=0.0)
    return matches[0] if matches else None


def unknown_key_error(key: str, known: typing.Iterable[str], path: str) -> SchemaError:
    where = f"{path}.{key}" if path else key
    nearest = nearest_key(key, known)
    hint = f"; did you mean {(path + '.' if path else '') + nearest!r}?" if nearest else ""
    return SchemaError(f"unknown key {where!r}{hint}")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, arg, path)
            except SchemaError as exc:
                # An object that is the right kind but wrong inside says where, not just "expected object".
                if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                    raise exc
                continue
        raise SchemaError(f"{path}: expected {type_name(tp)}, got {type(value).__name__} {value!r}")
    # A record that is not all typed fields (e.g. a free-form tail) parses itself, as strictly as it can.
    own_parser = getattr(tp, "parse_json", None)
    if own_parser is not None:
        return own_parser(value, path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected an object, got {type(value).__name__}")
        return parse(tp, value, path)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected an object, got {type(value).__name__}")
        args = typing.get_args(tp)
        if not args:
            return dict(value)
        return {key: _convert(item, args[1], f"{path}.{key}") for key, item in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected {type_name(tp)}, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:
            if len(value) != len(args):
                raise SchemaError(f"{path}: expected a list of {len(args)} items, got {len(value)}")
            return tuple(_convert(item, arg, f"{path}[{i}]") for i, (item, arg) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [_convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # JSON integers have any length; a float has a range
                raise SchemaError(f"{path}: an integer of {len(str(abs(value)))} digits is beyond the range of a "
                                  "number") from None
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    elif tp is Any:
        return value
    raise SchemaError(f"{path}: expected {type_name(tp)}, got {type(value).__name__} {value!r}")


def parse(cls: type, data: dict, path: str = "", rest: str | None = None) -> Any:
    """`cls` built from `data`, every key checked against its fields, recursively. With `rest`, the keys
    that are not fields go into that (dict) field instead of being refused: a record's free-form tail."""
    if not isinstance(data, dict):
        raise SchemaError(f"{path or 'top level'}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != rest}
    unknown = {key: value for key, value in data.items() if key not in fields}
    if unknown and rest is None:
        raise unknown_key_error(next(iter(unknown)), fields, path)
    kwargs = {rest: unknown} if rest is not None else {}
    for name, spec in fields.items():
        where = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], where)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise SchemaError(f"missing required key {where!r}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the records validate their values on construction
        raise SchemaError(f"{path or 'top level'}: {exc}") from exc
