"""A calculator that walks the expression's syntax tree itself: no ``eval``, no names but a fixed
set of functions and constants, and every integer result bounded in size before it is computed,
so ``9**9**9`` is refused in microseconds instead of eating the machine."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from microturn.tools.registry import Tool, ToolContext, ToolFailed

Number = int | float

CONSTANTS: dict[str, Number] = {"pi": math.pi, "e": math.e, "tau": math.tau}

FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "cbrt": math.cbrt,
    "exp": math.exp,
    "log": math.log,
    "ln": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "degrees": math.degrees,
    "radians": math.radians,
    "hypot": math.hypot,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "min": min,
    "max": max,
    "factorial": math.factorial,
}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_SYMBOLS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}


class CalculatorError(ToolFailed):
    pass


@dataclass(frozen=True)
class Limits:
    max_chars: int = 256
    max_nodes: int = 200
    max_int_bits: int = 4096
    max_exponent: int = 10_000
    max_factorial: int = 1000


def _normalise(expression: str) -> str:
    return (
        expression.replace("^", "**").replace("×", "*").replace("÷", "/").replace("−", "-").replace("–", "-")
    )


class _Evaluator:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def check_int(self, value: Number) -> Number:
        if isinstance(value, int) and value.bit_length() > self.limits.max_int_bits:
            raise CalculatorError(f"result exceeds {self.limits.max_int_bits} bits")
        if isinstance(value, float) and not math.isfinite(value):
            raise CalculatorError("result is not a finite number")
        return value

    def eval(self, node: ast.AST) -> Number:
        match node:
            case ast.Expression(body=body):
                return self.eval(body)
            case ast.Constant(value=value) if type(value) in (int, float):
                return self.check_int(value)
            case ast.Name(id=name) if name in CONSTANTS:
                return CONSTANTS[name]
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                return -self.eval(operand)
            case ast.UnaryOp(op=ast.UAdd(), operand=operand):
                return +self.eval(operand)
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINOPS:
                return self.binop(op, self.eval(left), self.eval(right))
            case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in FUNCTIONS:
                return self.call(name, [self.eval(a) for a in args])
            case ast.Name(id=name):
                raise CalculatorError(f"unknown name {name!r}; known: {', '.join(sorted(CONSTANTS))}")
            case ast.Call(func=ast.Name(id=name)):
                raise CalculatorError(f"unknown function {name!r}; known: {', '.join(sorted(FUNCTIONS))}")
            case _:
                raise CalculatorError(f"unsupported syntax: {type(node).__name__}")

    def binop(self, op: ast.operator, a: Number, b: Number) -> Number:
        lim = self.limits
        if isinstance(op, ast.Pow):
            if abs(b) > lim.max_exponent:
                raise CalculatorError(f"exponent {b} exceeds the limit of {lim.max_exponent}")
            if (
                isinstance(a, int)
                and isinstance(b, int)
                and b > 0
                and a.bit_length() * b > lim.max_int_bits + b
            ):
                raise CalculatorError(f"result of {a}**{b} would exceed {lim.max_int_bits} bits")
            if isinstance(a, int) and isinstance(b, int) and b < 0 and a == 0:
                raise CalculatorError("zero cannot be raised to a negative power")
        both_int = isinstance(a, int) and isinstance(b, int)
        if isinstance(op, ast.Mult) and both_int and a.bit_length() + b.bit_length() > lim.max_int_bits + 1:
            raise CalculatorError(f"product would exceed {lim.max_int_bits} bits")
        try:
            value = _BINOPS[type(op)](a, b)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
        if isinstance(value, complex):
            raise CalculatorError("result is a complex number")
        return self.check_int(value)

    def call(self, name: str, args: list[Number]) -> Number:
        if name == "factorial" and (
            len(args) != 1 or not isinstance(args[0], int) or not 0 <= args[0] <= self.limits.max_factorial
        ):
            raise CalculatorError(f"factorial takes one whole number from 0 to {self.limits.max_factorial}")
        # round(x, -n) on a whole number computes 10**n first: bound n like an exponent.
        if (
            name == "round"
            and len(args) == 2
            and isinstance(args[1], int)
            and abs(args[1]) > self.limits.max_exponent
        ):
            raise CalculatorError(f"round: at most {self.limits.max_exponent} digits either way")
        try:
            value = FUNCTIONS[name](*args)
        except (ValueError, TypeError) as exc:
            raise CalculatorError(f"{name}: {exc}") from None
        except OverflowError:
            raise CalculatorError(f"{name}: result too large") from None
        return self.check_int(value)


def evaluate(expression: str, limits: Limits = Limits()) -> Number:
    """Evaluate an arithmetic expression or raise CalculatorError saying why not."""
    if len(expression) > limits.max_chars:
        raise CalculatorError(
            f"expression is {len(expression)} characters, over the limit of {limits.max_chars}"
        )
    text = _normalise(expression).strip()
    if not text:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise CalculatorError(f"not an arithmetic expression: {getattr(exc, 'msg', exc)}") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > limits.max_nodes:
        raise CalculatorError(f"expression has {nodes} parts, over the limit of {limits.max_nodes}")
    try:
        return _Evaluator(limits).eval(tree)
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None


def format_number(value: Number) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def calculator_tool(limits: Limits = Limits()) -> Tool:
    async def run(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        value = evaluate(args["expression"], limits)
        return {"expression": args["expression"], "value": value, "text": format_number(value)}

    return Tool(
        name="calculator",
        description="Evaluate an arithmetic expression: + - * / // % ** (or ^), parentheses, "
        f"functions {', '.join(sorted(FUNCTIONS))} and constants pi, e, tau.",
        schema="calculator.v1",
        parameters={
            "type": "object",
            "properties": {
                "expression": {"type": "string", "minLength": 1, "maxLength": limits.max_chars},
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
        run=run,
        timeout_ms=1000,
        max_argument_bytes=max(1024, limits.max_chars * 4 + 64),
        max_result_bytes=max(4096, limits.max_int_bits // 3 + 512),
    )
