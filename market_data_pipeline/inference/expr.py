"""The rule condition language: a tokenizer and a recursive-descent parser to a typed AST that
our own code evaluates. User text is never given to ``eval``/``exec``/``compile``.

Grammar (lowest precedence first)::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)*     a < b < c means a<b and b<c
    sum     := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := ("-" | "+") unary | atom
    atom    := NUMBER | "true" | "false" | NAME | CALL | "(" expr ")"
    CALL    := ("abs" | "min" | "max" | "crosses_above" | "crosses_below") "(" expr ("," expr)* ")"

Names are feature names (checked against the known ones at parse time). Every node has a type,
number or boolean, checked at parse time: ``rsi and 3`` or ``(rsi > 70) + 1`` are errors.
``crosses_above(a, b)`` is true when ``a > b`` now and ``a <= b`` at the previous evaluation for
the same symbol (``crosses_below`` mirrors it); the caller keeps that memory
(:class:`CrossMemory`). Arithmetic follows IEEE: ``x / 0`` is ``inf`` or ``nan``, and every
comparison with ``nan`` (a feature not ready yet) is false.

Every error is an :class:`ExprError` with the column and a plain-language reason.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from market_data_core.errors import ConfigError

__all__ = [
    "FUNCTIONS",
    "CrossMemory",
    "Expr",
    "ExprError",
    "parse_condition",
]

Kind = Literal["num", "bool"]
FUNCTIONS: Final[dict[str, tuple[int, int | None]]] = {
    "abs": (1, 1),
    "min": (2, None),
    "max": (2, None),
    "crosses_above": (2, 2),
    "crosses_below": (2, 2),
}
_KEYWORDS: Final = frozenset({"and", "or", "not", "true", "false"})
_MAX_LENGTH: Final = 1000
_MAX_DEPTH: Final = 50

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op><=|>=|==|!=|[<>+\-*/(),])
    """,
    re.VERBOSE,
)


class ExprError(ConfigError, ValueError):
    """A condition that cannot be parsed; ``column`` is 1-based (0 when not positional).
    A :class:`~market_data_core.errors.ConfigError` (a bad rule is bad configuration; the
    rules loader adds the file and key) and, as before, a ``ValueError``."""

    def __init__(self, message: str, column: int = 0) -> None:
        self.column = column
        super().__init__(f"{message} (at column {column})" if column else message)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: Literal["num", "name", "op", "end", "bad"]
    text: str
    col: int


def _tokenize(text: str) -> list[_Tok]:
    if len(text) > _MAX_LENGTH:
        raise ExprError(f"condition is longer than {_MAX_LENGTH} characters")
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            why = {
                "'": "strings are not part of the rule language",
                '"': "strings are not part of the rule language",
                ".": "attribute access is not allowed",
                "[": "subscripts are not allowed",
                ":": "lambdas, slices and dicts are not allowed",
                "=": "assignment is not allowed (use == to compare)",
            }.get(ch, "not part of the rule language")
            # reported when the parser reaches it, so errors come in reading order
            out.append(_Tok("bad", f"unexpected character {ch!r}: {why}", pos + 1))
            return out
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos + 1))  # type: ignore[arg-type]
        pos = m.end()
    out.append(_Tok("end", "", len(text) + 1))
    return out


class _Node:
    __slots__ = ("kind",)
    kind: Kind

    def num(self, env: _Env) -> float:
        raise NotImplementedError

    def truth(self, env: _Env) -> bool:
        raise NotImplementedError


class _Env:
    __slots__ = ("crosses", "values")

    def __init__(self, values: Mapping[str, float], crosses: Sequence[bool]) -> None:
        self.values = values
        self.crosses = crosses


class _Num(_Node):
    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.kind = "num"
        self.value = value

    def num(self, env: _Env) -> float:
        return self.value


class _Bool(_Node):
    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.kind = "bool"
        self.value = value

    def truth(self, env: _Env) -> bool:
        return self.value


class _Name(_Node):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.kind = "num"
        self.name = name

    def num(self, env: _Env) -> float:
        return env.values.get(self.name, math.nan)


def _div(a: float, b: float) -> float:
    if b == 0.0:
        if a == 0.0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


_ARITH: Final[dict[str, Callable[[float, float], float]]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _div,
}
_COMPARE: Final[dict[str, Callable[[float, float], bool]]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class _Arith(_Node):
    __slots__ = ("fn", "left", "right")

    def __init__(self, op: str, left: _Node, right: _Node) -> None:
        self.kind = "num"
        self.fn = _ARITH[op]
        self.left = left
        self.right = right

    def num(self, env: _Env) -> float:
        return self.fn(self.left.num(env), self.right.num(env))


class _Neg(_Node):
    __slots__ = ("operand",)

    def __init__(self, operand: _Node) -> None:
        self.kind = "num"
        self.operand = operand

    def num(self, env: _Env) -> float:
        return -self.operand.num(env)


class _Compare(_Node):
    __slots__ = ("fns", "operands")

    def __init__(self, operands: list[_Node], ops: list[str]) -> None:
        self.kind = "bool"
        self.operands = operands
        self.fns = [_COMPARE[o] for o in ops]

    def truth(self, env: _Env) -> bool:
        left = self.operands[0].num(env)
        for fn, node in zip(self.fns, self.operands[1:], strict=True):
            right = node.num(env)
            if not fn(left, right):
                return False
            left = right
        return True


class _Logic(_Node):
    __slots__ = ("is_and", "parts")

    def __init__(self, is_and: bool, parts: list[_Node]) -> None:
        self.kind = "bool"
        self.is_and = is_and
        self.parts = parts

    def truth(self, env: _Env) -> bool:
        if self.is_and:
            return all(p.truth(env) for p in self.parts)
        return any(p.truth(env) for p in self.parts)


class _Not(_Node):
    __slots__ = ("operand",)

    def __init__(self, operand: _Node) -> None:
        self.kind = "bool"
        self.operand = operand

    def truth(self, env: _Env) -> bool:
        return not self.operand.truth(env)


class _Call(_Node):
    __slots__ = ("args", "fn")

    def __init__(self, name: str, args: list[_Node]) -> None:
        self.kind = "num"
        self.args = args
        self.fn: Callable[[list[float]], float]
        if name == "abs":
            self.fn = lambda xs: abs(xs[0])
        elif name == "min":
            # nan-propagating, unlike the builtin (whose result depends on argument order)
            self.fn = lambda xs: math.nan if any(x != x for x in xs) else min(xs)
        else:
            self.fn = lambda xs: math.nan if any(x != x for x in xs) else max(xs)

    def num(self, env: _Env) -> float:
        return self.fn([a.num(env) for a in self.args])


class _Cross(_Node):
    __slots__ = ("a", "above", "index")

    def __init__(self, above: bool, a: _Node, b: _Node, index: int) -> None:
        self.kind = "bool"
        self.above = above
        self.a = _Arith("-", a, b)  # the sign of a - b is what crosses
        self.index = index

    def truth(self, env: _Env) -> bool:
        return env.crosses[self.index]


class CrossMemory:
    """What ``crosses_*`` remember between evaluations: ``a - b`` per cross, per symbol."""

    __slots__ = ("previous",)

    def __init__(self, crosses: int) -> None:
        self.previous: list[float] = [math.nan] * crosses


class Expr:
    """A parsed, type-checked condition. :meth:`evaluate` is pure except for ``memory``."""

    __slots__ = ("_crosses", "_root", "names", "source")

    def __init__(self, source: str, root: _Node, crosses: list[_Cross], names: frozenset[str]):
        self.source = source
        self._root = root
        self._crosses = crosses
        self.names = names

    def new_memory(self) -> CrossMemory:
        return CrossMemory(len(self._crosses))

    def evaluate(self, values: Mapping[str, float], memory: CrossMemory) -> bool:
        """The condition's truth for ``values``; updates ``memory`` for the next call.

        Every cross is computed on every call (not short-circuited) so that its memory always
        holds the previous evaluation's ``a - b``.
        """
        now: list[bool] = []
        env = _Env(values, now)
        prev = memory.previous
        for i, cross in enumerate(self._crosses):
            diff = cross.a.num(env)
            before = prev[i]
            if cross.above:
                now.append(before <= 0.0 and diff > 0.0)
            else:
                now.append(before >= 0.0 and diff < 0.0)
            prev[i] = diff
        return self._root.truth(env)


class _Parser:
    def __init__(self, text: str, known: frozenset[str]) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.pos = 0
        self.known = known
        self.names: set[str] = set()
        self.crosses: list[_Cross] = []
        self.depth = 0

    @property
    def tok(self) -> _Tok:
        t = self.toks[self.pos]
        if t.kind == "bad":
            raise ExprError(t.text, t.col)
        return t

    def _take(self) -> _Tok:
        t = self.tok
        self.pos += 1
        return t

    def _expect(self, text: str) -> _Tok:
        t = self.tok
        if t.text != text or t.kind not in ("op", "name"):
            found = "end of condition" if t.kind == "end" else repr(t.text)
            raise ExprError(f"expected {text!r}, found {found}", t.col)
        return self._take()

    def _need(self, node: _Node, kind: Kind, what: str, col: int) -> _Node:
        if node.kind != kind:
            want = "a number" if kind == "num" else "a true/false condition"
            got = "a number" if node.kind == "num" else "a true/false condition"
            raise ExprError(f"{what} needs {want}, got {got}", col)
        return node

    def parse(self) -> _Node:
        node = self._or()
        if self.tok.kind != "end":
            raise ExprError(f"unexpected {self.tok.text!r}", self.tok.col)
        return node

    def _or(self) -> _Node:
        col = self.tok.col
        parts = [self._and()]
        while self.tok.text == "or" and self.tok.kind == "name":
            c = self._take().col
            parts.append(self._and())
            self._need(parts[-1], "bool", "'or'", c)
        if len(parts) == 1:
            return parts[0]
        self._need(parts[0], "bool", "'or'", col)
        return _Logic(False, parts)

    def _and(self) -> _Node:
        col = self.tok.col
        parts = [self._not()]
        while self.tok.text == "and" and self.tok.kind == "name":
            c = self._take().col
            parts.append(self._not())
            self._need(parts[-1], "bool", "'and'", c)
        if len(parts) == 1:
            return parts[0]
        self._need(parts[0], "bool", "'and'", col)
        return _Logic(True, parts)

    def _not(self) -> _Node:
        if self.tok.text == "not" and self.tok.kind == "name":
            col = self._take().col
            return _Not(self._need(self._nested(self._not), "bool", "'not'", col))
        return self._compare()

    def _compare(self) -> _Node:
        first = self._sum()
        operands = [first]
        ops: list[str] = []
        while self.tok.kind == "op" and self.tok.text in _COMPARE:
            t = self._take()
            self._need(operands[-1], "num", f"{t.text!r}", t.col)
            ops.append(t.text)
            operands.append(self._need(self._sum(), "num", f"{t.text!r}", t.col))
        return first if not ops else _Compare(operands, ops)

    def _sum(self) -> _Node:
        node = self._term()
        while self.tok.kind == "op" and self.tok.text in ("+", "-"):
            t = self._take()
            right = self._term()
            self._need(node, "num", f"{t.text!r}", t.col)
            self._need(right, "num", f"{t.text!r}", t.col)
            node = _Arith(t.text, node, right)
        return node

    def _term(self) -> _Node:
        node = self._unary()
        while self.tok.kind == "op" and self.tok.text in ("*", "/"):
            t = self._take()
            right = self._unary()
            self._need(node, "num", f"{t.text!r}", t.col)
            self._need(right, "num", f"{t.text!r}", t.col)
            node = _Arith(t.text, node, right)
        return node

    def _unary(self) -> _Node:
        if self.tok.kind == "op" and self.tok.text in ("-", "+"):
            t = self._take()
            operand = self._need(self._nested(self._unary), "num", f"unary {t.text!r}", t.col)
            return _Neg(operand) if t.text == "-" else operand
        return self._atom()

    def _nested(self, rule: Callable[[], _Node]) -> _Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ExprError(f"condition is nested more than {_MAX_DEPTH} levels", self.tok.col)
        try:
            return rule()
        finally:
            self.depth -= 1

    def _atom(self) -> _Node:
        t = self.tok
        if t.kind == "num":
            self._take()
            value = float(t.text)
            if not math.isfinite(value):
                raise ExprError(f"number {t.text} is out of range", t.col)
            return _Num(value)
        if t.kind == "op" and t.text == "(":
            self._take()
            node = self._nested(self._or)
            self._expect(")")
            return node
        if t.kind == "name":
            return self._name_or_call()
        found = "end of condition" if t.kind == "end" else repr(t.text)
        raise ExprError(f"expected a number, a feature name or '(', found {found}", t.col)

    def _name_or_call(self) -> _Node:
        t = self._take()
        name = t.text
        if name in ("true", "false"):
            return _Bool(name == "true")
        if name in _KEYWORDS:
            raise ExprError(f"{name!r} cannot start an operand", t.col)
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            raise ExprError(f"{name!r} is not part of the rule language", t.col)
        if name.startswith("_"):
            raise ExprError(f"names may not start with '_' ({name!r})", t.col)
        is_call = self.tok.kind == "op" and self.tok.text == "("
        if is_call:
            if name not in FUNCTIONS:
                raise ExprError(f"unknown function {name!r} (known: {', '.join(FUNCTIONS)})", t.col)
            self._take()
            args = [self._nested(self._or)]
            while self.tok.kind == "op" and self.tok.text == ",":
                self._take()
                args.append(self._nested(self._or))
            self._expect(")")
            lo, hi = FUNCTIONS[name]
            if len(args) < lo or (hi is not None and len(args) > hi):
                want = str(lo) if lo == hi else f"at least {lo}"
                raise ExprError(f"{name}() takes {want} arguments, got {len(args)}", t.col)
            for a in args:
                self._need(a, "num", f"{name}()", t.col)
            if name.startswith("crosses_"):
                cross = _Cross(name == "crosses_above", args[0], args[1], len(self.crosses))
                self.crosses.append(cross)
                return cross
            return _Call(name, args)
        if name in FUNCTIONS:
            raise ExprError(f"{name} is a function: call it as {name}(...)", t.col)
        if name not in self.known:
            raise ExprError(
                f"unknown feature {name!r} (known: {', '.join(sorted(self.known))})", t.col
            )
        self.names.add(name)
        return _Name(name)


def parse_condition(text: str, known_features: Sequence[str] | frozenset[str]) -> Expr:
    """Parse and type-check a condition; it must be true/false. Raises :class:`ExprError`."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("condition is empty")
    parser = _Parser(text, frozenset(known_features))
    root = parser.parse()
    if root.kind != "bool":
        raise ExprError("a condition must be true or false (compare with <, >, ==, ...)", 1)
    return Expr(text, root, parser.crosses, frozenset(parser.names))
