"""Protocol buffer text format (Triton's config.pbtxt): written from plain values, read back without a schema.

Writing: a message is a dict (field -> value); a value is a str (quoted), an int, a float, a bool, an
`Enum` (a bare identifier such as TYPE_UINT8), a dict (a nested message) or a list (a repeated field).
Reading returns every field as a list of its occurrences, since without the .proto a parser cannot know
which fields repeat; nested messages are dicts of the same kind. The reader exists so that the exporter can
check an existing config.pbtxt (which a person may have edited) without depending on protobuf.
"""

from __future__ import annotations

import re
from typing import Any


class PbtxtError(ValueError):
    """Text that is not protocol buffer text format; the message gives the line."""


class Enum(str):
    """An enum value, written bare: `data_type: TYPE_FP32`."""


_SAFE = re.compile(rb"[ !#-\[\]-~]")  # printable ASCII but the quote and the backslash


def quote(text: str) -> str:
    """A string literal: printable ASCII as is, everything else (quotes, newlines, non-ASCII UTF-8 bytes) as
    C escapes, which protobuf's parsers (C++ and Python) both read back to the same string."""
    out = []
    for byte in text.encode("utf-8"):
        char = bytes([byte])
        if _SAFE.fullmatch(char):
            out.append(char.decode("ascii"))
        elif char in (b'"', b"\\"):
            out.append("\\" + char.decode("ascii"))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"{type(value).__name__} is not a text-format scalar")


def _field(name: str, value: Any, indent: str) -> list[str]:
    if isinstance(value, dict):
        return [f"{indent}{name} {{", *_message(value, indent + "  "), f"{indent}}}"]
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            lines = [f"{indent}{name} ["]
            for index, item in enumerate(value):
                lines += [f"{indent}  {{", *_message(item, indent + "    "),
                          f"{indent}  }}{',' if index < len(value) - 1 else ''}"]
            return lines + [f"{indent}]"]
        items = ", ".join(_scalar(item) for item in value)
        return [f"{indent}{name}: [ {items} ]" if items else f"{indent}{name}: []"]
    return [f"{indent}{name}: {_scalar(value)}"]


def _message(fields: dict, indent: str) -> list[str]:
    lines = []
    for name, value in fields.items():
        lines += _field(name, value, indent)
    return lines


def render(fields: dict, header: str = "") -> str:
    """The message as text, one field a line, with `header` (lines of comment, without '#') on top."""
    comments = [f"# {line}".rstrip() for line in header.splitlines()]
    return "\n".join(comments + _message(fields, "")) + "\n"


_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?)
  | (?P<ident>[-]?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]<>:,;])
""", re.VERBOSE)
_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v",
            "\\": b"\\", "'": b"'", '"': b'"', "?": b"?"}


def _unquote(literal: str, line: int) -> str:
    body, out, index = literal[1:-1], bytearray(), 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            out += char.encode("utf-8")
            index += 1
            continue
        nxt = body[index + 1]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            index += 2
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[index + 1:]).group()
            out.append(int(digits, 8) & 0xFF)
            index += 1 + len(digits)
        elif nxt in "xX":
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[index + 2:])
            if digits is None:
                raise PbtxtError(f"line {line}: \\x without hex digits")
            out.append(int(digits.group(), 16))
            index += 2 + len(digits.group())
        else:
            raise PbtxtError(f"line {line}: unknown escape \\{nxt}")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PbtxtError(f"line {line}: string is not UTF-8 ({exc})") from exc


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens, position, line = [], 0, 1
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise PbtxtError(f"line {line}: unexpected {text[position:position + 20]!r}")
        kind = match.lastgroup
        if kind != "space":
            tokens.append((kind, match.group(), line))
        line += match.group().count("\n")
        position = match.end()
    return tokens


class _Reader:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.index = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise PbtxtError(f"unexpected end of text{f', expected {expected!r}' if expected else ''}")
        if expected is not None and token[1] != expected:
            raise PbtxtError(f"line {token[2]}: expected {expected!r}, got {token[1]!r}")
        self.index += 1
        return token

    def message(self, closing: str | None) -> dict:
        fields: dict[str, list] = {}
        while True:
            token = self.peek()
            if token is None:
                if closing is not None:
                    raise PbtxtError(f"unexpected end of text, expected {closing!r}")
                return fields
            if closing is not None and token[1] == closing:
                self.take()
                return fields
            kind, name, line = self.take()
            if kind != "ident":
                raise PbtxtError(f"line {line}: expected a field name, got {name!r}")
            colon = self.peek() is not None and self.peek()[1] == ":"
            if colon:
                self.take()
            values = self.values(line)
            fields.setdefault(name, []).extend(values)
            if self.peek() is not None and self.peek()[1] in ",;":
                self.take()

    def values(self, line: int) -> list:
        token = self.peek()
        if token is None:
            raise PbtxtError(f"line {line}: a field without a value")
        if token[1] == "[":
            self.take()
            items = []
            while self.peek() is not None and self.peek()[1] != "]":
                items.extend(self.values(line))
                if self.peek() is not None and self.peek()[1] == ",":
                    self.take()
            self.take("]")
            return items
        return [self.value()]

    def value(self) -> Any:
        kind, text, line = self.take()
        if text in ("{", "<"):
            return self.message("}" if text == "{" else ">")
        if kind == "string":
            parts = [_unquote(text, line)]
            while self.peek() is not None and self.peek()[0] == "string":  # adjacent literals concatenate
                parts.append(_unquote(self.take()[1], line))
            return "".join(parts)
        if kind == "number":
            number = text.rstrip("fF") if not text.lower().startswith(("0x", "-0x", "+0x")) else text
            try:
                return int(number, 0)
            except ValueError:
                return float(number)
        if kind == "ident":
            return {"true": True, "false": False}.get(text, Enum(text))
        raise PbtxtError(f"line {line}: expected a value, got {text!r}")


def parse(text: str) -> dict:
    """Every field of the message as a list of its values (nested messages as dicts of lists)."""
    return _Reader(text).message(None)
