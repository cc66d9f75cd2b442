"""The consistency kind's invariant language: ``active <= total``, ``0 <= total <= 200``,
``operational + degraded + outage == active``.

Arithmetic (+ - * /, unary minus) over field names and numbers, compared with < <= > >= == !=
(chains allowed).  Parsed with Python's own parser into a tree that is then checked node by
node against that short list: nothing else (calls, attributes, subscripts, names outside the
target's fields, strings) is accepted, the text and the tree are bounded, and evaluation never
executes code.  A division by zero gives NaN (every comparison with it fails).
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Annotated

from pydantic import PlainSerializer, PlainValidator

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}


class Invariant:
    """``a + b <= c``, ``0 <= total <= 200``: arithmetic over field names, compared (chains allowed)."""

    MAX_TEXT = 500
    MAX_NODES = 200

    def __init__(self, text: str, fields: set[str] | None = None):
        if not isinstance(text, str):
            raise ValueError("expected an invariant like \"active <= total\"")
        if len(text) > self.MAX_TEXT:
            raise ValueError(f"an invariant may be at most {self.MAX_TEXT} characters (this one has {len(text)})")
        self.text = " ".join(text.split())
        try:
            tree = ast.parse(self.text, mode="eval").body
        except (SyntaxError, RecursionError, MemoryError):
            raise ValueError(f'cannot read invariant "{self.text}"; expected e.g. "active <= total"') from None
        if not isinstance(tree, ast.Compare):
            raise ValueError(f'invariant "{self.text}" must compare, e.g. "active <= total"')
        if sum(1 for _ in ast.walk(tree)) > self.MAX_NODES:
            raise ValueError(f'invariant "{self.text[:60]}..." has more than {self.MAX_NODES} terms')
        self.tree = tree
        self.names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        self._check(tree)
        if fields is not None and self.names - fields:
            raise ValueError(f'invariant "{self.text}" uses {sorted(self.names - fields)[0]}, which is not a field')

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Invariant) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def _check(self, node: ast.AST) -> None:
        allowed = (ast.Compare, ast.BinOp, ast.UnaryOp, ast.Name, ast.Constant, ast.Load, ast.USub,
                   *_OPS, *_CMP)
        for n in ast.walk(node):
            if not isinstance(n, allowed) or (isinstance(n, ast.Constant) and not isinstance(n.value, int | float)):
                raise ValueError(f'invariant "{self.text}" may only use field names, numbers, + - * / and comparisons')

    def holds(self, values: dict[str, float]) -> bool | None:
        """True or False, or None when a field it needs is missing from the source."""
        if self.names - values.keys():
            return None

        def ev(n: ast.AST) -> float:
            if isinstance(n, ast.Constant):
                return float(n.value)
            if isinstance(n, ast.Name):
                return values[n.id]
            if isinstance(n, ast.UnaryOp):
                return -ev(n.operand)
            if isinstance(n, ast.BinOp):
                try:
                    return _OPS[type(n.op)](ev(n.left), ev(n.right))
                except ZeroDivisionError:
                    return math.nan
            raise AssertionError(n)

        left = ev(self.tree.left)
        for op, comp in zip(self.tree.ops, self.tree.comparators):
            right = ev(comp)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True


InvariantT = Annotated[Invariant, PlainValidator(lambda v: v if isinstance(v, Invariant) else Invariant(v)),
                       PlainSerializer(lambda i: i.text, return_type=str)]
