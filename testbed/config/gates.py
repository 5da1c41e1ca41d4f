"""`expect:` gates: small comparisons over the summary, e.g.
`raw.p50_ms < 2 * local.p50_ms` or `local.accuracy >= 0.89`.

Parsed with `ast` and evaluated by walking only the node types below: a gate is
data from a file, never code to exec.
"""

from __future__ import annotations

import ast
import operator

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_ALLOWED = (
    ast.Expression,
    ast.Compare,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.USub,
    ast.And,
    ast.Or,
    *_BINARY,
    *_COMPARE,
)
METRICS = (
    "n",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_bytes_up",
    "accuracy",
    "accuracy_drop_pp",
    "speedup_vs_raw",
    "failed",
    "p50_device_ms",
    "p50_encode_ms",
    "p50_uplink_ms",
    "p50_queue_ms",
    "precision",
    "recall",
    "mean_ms",
    "agreement",
    "accuracy_lo",
    "accuracy_hi",
    "within_bound",
)


class GateSyntaxError(ValueError):
    pass


def parse(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise GateSyntaxError(f"not an expression: {exc.msg}") from None
    if not isinstance(tree.body, ast.Compare | ast.BoolOp):
        raise GateSyntaxError("a gate must be a comparison, e.g. `raw.p50_ms < 100`")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if not isinstance(node.value, ast.Name):
                raise GateSyntaxError("use OFFLOADER.METRIC, e.g. `raw.p50_ms`")
            if node.attr not in METRICS:
                raise GateSyntaxError(f"unknown metric {node.attr!r}; known: {', '.join(METRICS)}")
        elif not isinstance(node, _ALLOWED) or (
            isinstance(node, ast.Constant) and not isinstance(node.value, int | float)
        ):
            raise GateSyntaxError(f"{type(node).__name__} is not allowed in a gate")
        if isinstance(node, ast.Name) and not _is_attribute_base(tree, node):
            raise GateSyntaxError(f"{node.id!r} alone is not a value; use {node.id}.p50_ms etc.")
    return tree


def _is_attribute_base(tree, name) -> bool:
    return any(isinstance(n, ast.Attribute) and n.value is name for n in ast.walk(tree))


def offloaders_named(text: str) -> set[str]:
    bases = (n.value for n in ast.walk(parse(text)) if isinstance(n, ast.Attribute))
    return {b.id for b in bases if isinstance(b, ast.Name)}  # parse allows only NAME.METRIC


def evaluate(text: str, summary: dict[str, dict]) -> tuple[bool, str]:
    """Return (holds, the gate with its values filled in)."""
    tree = parse(text)
    values: dict[str, float] = {}

    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Attribute):
            name = f"{node.value.id}.{node.attr}"
            row = summary.get(node.value.id)
            if row is None:
                raise GateSyntaxError(f"offloader {node.value.id!r} did not run in this scenario")
            v = row[node.attr]
            values[name] = float("nan") if v == "" else float(v)
            return values[name]
        if isinstance(node, ast.UnaryOp):
            return -value(node.operand)
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.BoolOp):
            results = [value(v) for v in node.values]
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.Compare):
            left = value(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = value(right_node)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        raise GateSyntaxError(f"{type(node).__name__} is not allowed in a gate")

    holds = bool(value(tree.body))
    filled = ", ".join(f"{k} = {v:.4g}" for k, v in values.items())
    return holds, f"{text}  ({filled})"
