"""Calculator tool environment: arithmetic problems and a safe expression evaluator.

The evaluator walks Python's AST and allows only numbers, + - * / // % **, unary signs, parentheses and a few
functions (abs, round, min, max, sqrt). Exponents and intermediate magnitudes are bounded, so no expression
can exhaust memory or time; anything else is rejected with a ValueError that the environment reports to the
agent.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from agentrl.core.types import Task
from environments.tools import Tool, ToolEnv, tool

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
}
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100
MAX_EXPRESSION_CHARS = 500


def safe_eval(expression: str) -> int | float:
    """Evaluate an arithmetic expression without `eval`; ValueError on anything outside the grammar."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(
            expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval"
        )
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    return _eval(tree.body)


def _check(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("only numbers are allowed")
    if abs(value) > MAX_MAGNITUDE:
        raise ValueError("number too large")
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        return _check(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent larger than {MAX_EXPONENT}")
        try:
            return _check(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords:
            raise ValueError("keyword arguments are not allowed")
        return _check(_FUNCTIONS[node.func.id](*(_eval(a) for a in node.args)))
    raise ValueError(f"unsupported syntax: {type(node).__name__}")


@tool(description="evaluates an arithmetic expression, e.g. calculator: (17 + 4) * 3 / 7")
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    value = safe_eval(expression)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def calculator_task(rng: np.random.Generator) -> Task:
    """A multi-step arithmetic problem with large numbers."""
    a, b, c = (int(x) for x in rng.integers(100, 10_000, size=3))
    d = int(rng.integers(2, 50))
    question = (
        f"A warehouse ships {a} boxes of {b} items each, then receives {c} items and splits the stock "
        f"into {d} equal lots (rounded down). How many items are in each lot?"
    )
    return Task(
        id=f"calc-{a}-{b}-{c}-{d}", question=question, answers=[str((a * b + c) // d)], dataset="calculator"
    )


class CalculatorEnv(ToolEnv):
    """Arithmetic word problems with a calculator tool; reward 1 for the exact number (math equivalence)."""

    tools: tuple[Tool, ...] = (calculator,)

    def default_task(self, rng: np.random.Generator) -> Task:
        return calculator_task(rng)
