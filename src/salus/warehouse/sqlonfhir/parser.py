"""FHIRPath syntax (FHIRPath N1 §"Grammar"): tokens and a Pratt parser.

The tree is made of tuples: ``("lit", value)``, ``("member", base, name)``,
``("call", base, name, args)``, ``("index", base, index)``, ``("binop", op,
left, right)``, ``("unary", op, operand)``, ``("typeop", "is"|"as", operand,
type)``, ``("var", name)``, ``("this",)`` and ``("empty",)``. Date and time
literals keep their text (without ``@``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from salus.warehouse.sqlonfhir.errors import ViewDefinitionError

__all__ = ["Node", "parse", "type_arg"]

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<delimited>`(?:[^`\\]|\\.)*`)
  | (?P<datetime>@T?[0-9][0-9:T.+\-Z]*)
  | (?P<number>[0-9]+(?:\.[0-9]+)?)
  | (?P<var>%(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
  | (?P<special>\$(?:this|index|total))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|!~|[=~<>+\-*/&|()\[\],.{}])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "r": "\r", "n": "\n", "t": "\t", "f": "\f", "\\": "\\"}

#: Binding power of infix operators (FHIRPath §"Operator precedence", tighter is higher).
_INFIX = {
    "implies": 1,
    "or": 2,
    "xor": 2,
    "and": 3,
    "in": 4,
    "contains": 4,
    "=": 5,
    "~": 5,
    "!=": 5,
    "!~": 5,
    "<": 6,
    ">": 6,
    "<=": 6,
    ">=": 6,
    "|": 7,
    "is": 8,
    "as": 8,
    "+": 9,
    "-": 9,
    "&": 9,
    "*": 10,
    "/": 10,
    "div": 10,
    "mod": 10,
}
_UNARY = 11


def _unescape(text: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", _unescape_one, text)


def _unescape_one(match: re.Match[str]) -> str:
    seq = match.group(1)
    if seq.startswith("u") and len(seq) == 5:
        return chr(int(seq[1:], 16))
    return _ESCAPES.get(seq, seq)


# -- parsing ----------------------------------------------------------------------------
Node = tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ViewDefinitionError(f"FHIRPath syntax error at character {pos + 1}.")
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append((kind, match.group()))
        pos = match.end()
    out.append(("end", ""))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos]

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, value: str) -> None:
        kind, text = self.take()
        if text != value or kind not in ("op", "ident"):
            raise ViewDefinitionError(f"FHIRPath syntax error: expected '{value}'.")

    def expression(self, power: int = 0) -> Node:
        left = self.prefix()
        while True:
            kind, text = self.peek()
            bp = _INFIX.get(text) if kind in ("op", "ident") else None
            if bp is None or bp <= power:
                return left
            self.take()
            if text in ("is", "as"):
                left = ("typeop", text, left, self.type_name())
            else:
                left = ("binop", text, left, self.expression(bp))

    def type_name(self) -> str:
        kind, text = self.take()
        if kind not in ("ident", "delimited"):
            raise ViewDefinitionError("FHIRPath syntax error: expected a type name.")
        name = text.strip("`")
        while self.peek()[1] == "." and self.tokens[self.pos + 1][0] == "ident":
            self.take()
            name = self.take()[1]  # FHIR.Quantity, System.String: the last part names it
        return name

    def prefix(self) -> Node:
        kind, text = self.peek()
        if kind == "op" and text in ("+", "-"):
            self.take()
            return ("unary", text, self.expression(_UNARY))
        return self.postfix(self.primary())

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "string":
            return ("lit", _unescape(text[1:-1]))
        if kind == "number":
            return ("lit", Decimal(text) if "." in text else int(text))
        if kind == "datetime":
            return ("lit", text[1:])
        if kind == "var":
            name = text[1:]
            return ("var", _unescape(name[1:-1]) if name[:1] in "`'" else name)
        if kind == "special":
            return ("this",) if text == "$this" else ("var", text)
        if kind == "delimited":
            return ("member", None, _unescape(text[1:-1]))
        if kind == "ident":
            if text in ("true", "false"):
                return ("lit", text == "true")
            if self.peek()[1] == "(":
                return self.call(None, text)
            return ("member", None, text)
        if text == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        if text == "{":
            self.expect("}")
            return ("empty",)
        raise ViewDefinitionError("FHIRPath syntax error: unexpected token.")

    def call(self, base: Node | None, name: str) -> Node:
        self.expect("(")
        args: list[Node] = []
        if self.peek()[1] != ")":
            args.append(self.expression())
            while self.peek()[1] == ",":
                self.take()
                args.append(self.expression())
        self.expect(")")
        return ("call", base, name, args)

    def postfix(self, node: Node) -> Node:
        while True:
            text = self.peek()[1]
            if text == ".":
                self.take()
                kind, name = self.take()
                if kind not in ("ident", "delimited"):
                    raise ViewDefinitionError("FHIRPath syntax error: expected a name after '.'.")
                name = _unescape(name[1:-1]) if kind == "delimited" else name
                node = self.call(node, name) if self.peek()[1] == "(" else ("member", node, name)
            elif text == "[":
                self.take()
                index = self.expression()
                self.expect("]")
                node = ("index", node, index)
            else:
                return node


def parse(text: str) -> Node:
    """The syntax tree of a FHIRPath expression (FHIRPath §"Grammar")."""
    if not isinstance(text, str) or not text.strip():
        raise ViewDefinitionError("A FHIRPath expression must be a non-empty string.")
    parser = _Parser(text)
    node = parser.expression()
    if parser.peek()[0] != "end":
        raise ViewDefinitionError("FHIRPath syntax error: unexpected text after the expression.")
    return node


def type_arg(node: Node) -> str:
    if node[0] == "member" and node[1] is None:
        return str(node[2])
    if node[0] == "member" and node[1] is not None and node[1][0] == "member":
        return str(node[2])  # FHIR.Quantity
    raise ViewDefinitionError("Expected a type name as the argument.")
