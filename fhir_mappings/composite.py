"""Composite scores: a total computed from its parts by a FHIRPath expression (fhirpathpy), over the parts' values
as environment variables: SCORAD is `%A / 5 + 7 * %B / 2 + %C`, EASI a weighted sum of region terms.

fhirpathpy's own `parse` recovers from syntax errors silently (it evaluates what it could read), so an expression
is first checked with the same generated ANTLR grammar and an error listener that keeps what it reports; then
compiled once, and evaluated per Observation with its components' values (~30 µs).
"""

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

#: a part's variable name: `%name` in the expression
PART_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: what FHIRPath itself defines as environment variables (never a part)
BUILT_IN = frozenset({"context", "resource", "rootResource", "ucum", "sct", "loinc"})


class _Errors(ErrorListener):  # type: ignore[misc]  # (antlr4 is untyped)
    def __init__(self) -> None:
        self.found: list[str] = []

    def syntaxError(self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str,  # noqa: N802, N803
                    e: Any) -> None:  # (ANTLR's names)
        self.found.append(f"at character {column + 1}: {msg.split(' expecting ')[0]}")


def check_expression(expression: str) -> tuple[list[str], list[str]]:
    """(syntax errors, the environment variables it reads: `%A` -> `A`) of a FHIRPath expression."""
    errors = _Errors()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(errors)
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(errors)
    parser.expression()
    if not errors.found and tokens.LA(1) != Token.EOF:
        extra = tokens.LT(1)
        errors.found.append(f"at character {extra.column + 1}: unexpected {extra.text!r}")
    tokens.fill()
    names = [tokens.tokens[i + 1].text for i, t in enumerate(tokens.tokens[:-1]) if t.text == "%"]
    return errors.found, [n for n in names if n not in BUILT_IN]


def compile_score(expression: str) -> Callable[[dict[str, Decimal]], Decimal | None]:
    """The expression compiled once: parts' values in, the total out (None when it gives no single number)."""
    compiled = compile_fhirpath(expression, None)

    def evaluate(values: dict[str, Decimal]) -> Decimal | None:
        try:
            result = compiled({}, values)
        except (ValueError, TypeError, ArithmeticError):
            return None
        if len(result) != 1 or isinstance(result[0], bool):
            return None
        try:
            total = Decimal(str(result[0]))
        except (InvalidOperation, ValueError):
            return None
        return total if total.is_finite() else None

    return evaluate
