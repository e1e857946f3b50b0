"""kubectl's JSONPath templates, for `-o jsonpath=TEMPLATE` (pure, no I/O).

The dialect of `kubectl get -o jsonpath` (client-go's util/jsonpath), for what people write:
text outside braces is printed as it is; inside `{...}`:

    .a.b  .a\\.b  ['a']   fields (a backslash keeps a dot in a key: .metadata.annotations.necrocode\\.io/requester)
    .*  [*]               every value of a map or item of a list
    [0]  [-1]  [1:3]  [::2]   index and slice (an index out of range is an error, as in kubectl)
    [0,2]  ['a','b']      union
    ..name                recursive descent
    [?(@.a=="x")]  [?(@.n>1)]  [?(@.a)]  [?(@.a=~"^re")]   filter (== != < > <= >= =~, or existence)
    @  $                  the current object
    "text"  'text'        literal text, with Go's escapes ("\\n", "\\t", "\\u00e9", ...)
    {range EXPR}...{end}  the body once per result of EXPR (`.items[*]`)

Results print as kubectl prints them: strings as they are, numbers and booleans in Go's way,
maps and lists as compact JSON, several results of one expression separated by a space; a
missing key prints nothing (kubectl's --allow-missing-template-keys, on by default).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


class JsonPathError(ValueError):
    """A template that cannot be parsed, or one that cannot be applied to the data."""


# ----------------------------------------------------------------------------- nodes
@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Wildcard:
    pass


@dataclass(frozen=True)
class Recursive:
    pass


@dataclass(frozen=True)
class Slice:
    start: int | None
    end: int | None
    step: int | None
    index: bool  # [n]: one item, its end derived from its start


@dataclass(frozen=True)
class Union:
    parts: tuple[tuple[Node, ...], ...]


@dataclass(frozen=True)
class Filter:
    left: tuple[Node, ...]
    op: str  # "exists" or a comparison
    right: tuple[Node, ...]


class Literal(str):
    """Text the template wrote (a quoted string), printed as it is, never escaped."""


@dataclass(frozen=True)
class Const:
    value: Any


Node = Field | Wildcard | Recursive | Slice | Union | Filter | Const


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Action:
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class Range:
    nodes: tuple[Node, ...]
    body: tuple[Item, ...]


Item = Text | Action | Range


# ----------------------------------------------------------------------------- parsing
_TERMINATORS = frozenset(" \t\r\n.,[]$@{}")
_SLICE = re.compile(r"^(-?\d*)(:-?\d*)?(:-?\d*)?$")
_COMPARISON = re.compile(r"^([^!<>=]+)([!<>=~]+)(.+?)$")
_ESCAPE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)", re.S)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "\\": "\\",
                   '"': '"', "'": "'"}
_OPERATORS = frozenset({"==", "!=", "<", ">", "<=", ">=", "=~"})


def _unescape(match: re.Match[str]) -> str:
    esc = match.group()[1:]
    if esc in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[esc]
    if esc[0] in "xuU" and len(esc) > 1:
        return chr(int(esc[1:], 16))
    if len(esc) == 3 and esc.isdigit():
        return chr(int(esc, 8))
    raise JsonPathError(f"invalid escape \\{esc} in a quoted string")


class _Parser:
    def __init__(self, text: str):
        self.s, self.i = text, 0

    def error(self, what: str) -> JsonPathError:
        return JsonPathError(f"{what} at position {self.i} of {self.s!r}")

    def peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def word(self) -> str:
        """Up to the next unescaped terminator, backslashes dropped (they keep the next character)."""
        out = []
        while self.i < len(self.s) and self.s[self.i] not in _TERMINATORS:
            if self.s[self.i] == "\\" and self.i + 1 < len(self.s):
                self.i += 1
            out.append(self.s[self.i])
            self.i += 1
        return "".join(out)

    def quoted(self) -> str:
        quote = self.s[self.i]
        start = self.i
        self.i += 1
        while self.i < len(self.s) and self.s[self.i] != quote:
            if self.s[self.i] in "\r\n":
                break
            self.i += 2 if self.s[self.i] == "\\" else 1
        if self.i >= len(self.s) or self.s[self.i] != quote:
            self.i = start
            raise self.error("unterminated quoted string")
        self.i += 1
        return _ESCAPE.sub(_unescape, self.s[start + 1:self.i - 1])

    def nodes(self, stop: str) -> list[Node | str]:
        """Nodes up to `stop` (a '}' ends an action; "" the end of the text); identifiers
        (range, end) are returned as str."""
        out: list[Node | str] = []
        while True:
            c = self.peek()
            if c == "":
                if stop:
                    raise self.error("unclosed action")
                return out
            if c == stop:
                return out
            if self.peek(3) == "[?(":
                out.append(self.filter())
            elif self.peek(2) == "..":
                if out and isinstance(out[-1], Recursive):
                    raise self.error("invalid multiple recursive descent")
                self.i += 2
                out.append(Recursive())
                if self.peek().isalnum() or self.peek() == "_":
                    out.append(self.field())
            elif c in " \t@$":
                self.i += 1
            elif c in "\r\n":
                raise self.error("unclosed action")
            elif c == "[":
                out.extend(self.bracket())
            elif c in "\"'":
                out.append(Const(Literal(self.quoted())))
            elif c == ".":
                self.i += 1
                out.append(self.field())
            elif c in "+-" or c.isdigit():
                out.append(self.number())
            elif c.isalnum() or c == "_":
                name = self.word()
                out.append(Const(name == "true") if name in ("true", "false") else name)
            else:
                raise self.error(f"unrecognized character {c!r} in an action")

    def field(self) -> Node:
        name = self.word()
        return Wildcard() if name == "*" else Field(name)

    def number(self) -> Node:
        start = self.i
        if self.peek() in "+-":
            self.i += 1
        while self.peek() == "." or self.peek().isdigit():
            self.i += 1
        text = self.s[start:self.i]
        try:
            return Const(int(text))
        except ValueError:
            try:
                return Const(float(text))
            except ValueError:
                raise self.error(f"cannot parse number {text!r}") from None

    def bracket(self) -> list[Node]:
        end = self.s.find("]", self.i)
        if end < 0 or "\n" in self.s[self.i:end]:
            raise self.error("unterminated array")
        inner = self.s[self.i + 1:end]
        self.i = end + 1
        inner = ":" if inner == "*" else inner
        parts = inner.split(",")
        if len(parts) > 1:
            return [Union(tuple(tuple(sub(f"[{p.strip()}]")) for p in parts))]
        key = re.fullmatch(r"'([^']*)'", inner)
        if key:  # kubectl reads ['a.b'] as .a.b
            return sub(f".{key.group(1)}")
        m = _SLICE.match(inner)
        if not m:
            raise self.error(f"invalid array index {inner!r}")
        start, stop, step = m.group(1), m.group(2), m.group(3)
        if stop is None:  # [n] (or [] for all)
            return [Slice(int(start), None, None, True) if start else Slice(None, None, None, False)]
        as_int = [int(v) if v not in ("", "-") else None for v in (start, stop[1:], (step or ":")[1:])]
        if as_int[2] is not None and as_int[2] <= 0:
            raise self.error("step must be > 0")
        return [Slice(as_int[0], as_int[1], as_int[2], False)]

    def filter(self) -> Node:
        start = self.i = self.i + 3
        quote = ""
        while True:
            c = self.peek()
            if c in ("", "\n"):
                raise self.error("unterminated filter")
            self.i += 1
            if quote:
                if c == "\\":
                    self.i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c == ")":
                break
        if self.peek() != "]":
            raise self.error("unclosed array, expected ]")
        text = self.s[start:self.i - 1]
        self.i += 1
        m = _COMPARISON.match(text)
        if m is None:
            return Filter(tuple(sub(text)), "exists", ())
        if m.group(2) not in _OPERATORS:
            raise self.error(f"unrecognized filter operator {m.group(2)!r}")
        return Filter(tuple(sub(m.group(1))), m.group(2), tuple(sub(m.group(3))))


def sub(text: str) -> list[Node]:
    """The nodes of one expression (inside a filter, a union, a bracket key)."""
    p = _Parser(text)
    out = p.nodes("")
    words = [n for n in out if isinstance(n, str)]
    if words:
        raise JsonPathError(f"unrecognized identifier {words[0]!r} in {text!r}")
    return [n for n in out if not isinstance(n, str)]


def parse(template: str) -> tuple[Item, ...]:
    """The template as text, actions and ranges; JsonPathError when it is not one."""
    p = _Parser(template)
    stack: list[list[Item]] = [[]]
    ranges: list[tuple[Node, ...]] = []
    while p.i < len(template):
        brace = template.find("{", p.i)
        if brace < 0:
            stack[-1].append(Text(template[p.i:]))
            break
        if brace > p.i:
            stack[-1].append(Text(template[p.i:brace]))
        p.i = brace + 1
        found = p.nodes("}")
        p.i += 1
        words = [n for n in found if isinstance(n, str)]
        nodes = tuple(n for n in found if not isinstance(n, str))
        if not words:
            stack[-1].append(Action(nodes))
        elif words == ["range"] and found[0] == "range":
            ranges.append(nodes)
            stack.append([])
        elif words == ["end"] and not nodes:
            if not ranges:
                raise JsonPathError(f"not in range, nothing to end in {template!r}")
            body = stack.pop()
            stack[-1].append(Range(ranges.pop(), tuple(body)))
        else:
            raise JsonPathError(f"unrecognized identifier {words[0]!r} in {template!r}")
    while ranges:  # a range left open runs to the end, as in kubectl
        body = stack.pop()
        stack[-1].append(Range(ranges.pop(), tuple(body)))
    return tuple(stack[0])


# ----------------------------------------------------------------------------- evaluation
def _children(v: Any) -> list[Any]:
    if isinstance(v, dict):
        return list(v.values())
    if isinstance(v, list):
        return list(v)
    return []


def _containers(v: Any) -> Iterator[Any]:
    kids = _children(v)
    if kids:
        yield v
        for k in kids:
            yield from _containers(k)


def _slice(values: list[Any], node: Slice) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v is None:
            continue
        if not isinstance(v, list):
            raise JsonPathError(f"{type(v).__name__} is not an array: cannot index it")
        n = len(v)
        start = node.start or 0
        start += n if start < 0 else 0
        if node.index:
            end = start + 1
        else:
            end = n if node.end is None else node.end + (n if node.end < 0 else 0)
        if start == end:
            continue
        if not 0 <= start < n or not 0 <= end <= n:
            raise JsonPathError(f"array index out of bounds: index {start if not 0 <= start < n else end - 1}, "
                                f"length {n}")
        if start > end:
            raise JsonPathError(f"starting index {start} is greater than ending index {end}")
        out += v[start:end:node.step or 1]
    return out


def _compare(left: Any, op: str, right: Any) -> bool:
    try:
        if op == "=~":
            return isinstance(left, str) and isinstance(right, str) and re.search(right, left) is not None
        if isinstance(left, bool) != isinstance(right, bool):
            return op == "!="
        return bool({"==": left == right, "!=": left != right}[op]) if op in ("==", "!=") else bool(
            {"<": lambda: left < right, ">": lambda: left > right, "<=": lambda: left <= right,
             ">=": lambda: left >= right}[op]())
    except (TypeError, re.error):
        return False


def _filter(values: list[Any], node: Filter) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not isinstance(v, list):
            raise JsonPathError(f"{type(v).__name__} is not an array and cannot be filtered")
        for item in v:
            lefts = walk([item], node.left)
            if node.op == "exists":
                if lefts:
                    out.append(item)
                continue
            rights = walk([item], node.right)
            if len(lefts) > 1 or len(rights) > 1:
                raise JsonPathError("can only compare one element at a time")
            if lefts and rights and _compare(lefts[0], node.op, rights[0]):
                out.append(item)
    return out


def walk(values: list[Any], nodes: tuple[Node, ...]) -> list[Any]:
    """The results of an expression's nodes, applied in turn to `values`."""
    for node in nodes:
        if isinstance(node, Field):
            values = [v[node.name] for v in values if isinstance(v, dict) and node.name in v] if node.name else values
        elif isinstance(node, Wildcard):
            values = [c for v in values for c in _children(v)]
        elif isinstance(node, Recursive):
            values = [c for v in values for c in _containers(v)]
        elif isinstance(node, Slice):
            values = _slice(values, node)
        elif isinstance(node, Union):
            values = [r for part in node.parts for r in walk(values, part)]
        elif isinstance(node, Filter):
            values = _filter(values, node)
        else:
            values = [node.value] * len(values) if not isinstance(node.value, Literal) else [node.value]
    return values


def text_of(value: Any) -> str:
    """A result as kubectl prints it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "" if value is None else str(value)


def render(template: tuple[Item, ...], data: Any, escape: Callable[[str], str] = lambda s: s) -> str:
    """The template applied to `data`; `escape` is applied to each value taken from the data
    (not to the template's own text)."""
    out: list[str] = []

    def run(items: tuple[Item, ...], current: Any) -> None:
        for item in items:
            if isinstance(item, Text):
                out.append(item.text)
            elif isinstance(item, Action):
                results = [r for r in walk([current], item.nodes) if r is not None]
                out.append(" ".join(r if isinstance(r, Literal) else escape(text_of(r)) for r in results))
            else:
                for value in walk([current], item.nodes):
                    run(item.body, value)

    run(template, data)
    return "".join(out)
