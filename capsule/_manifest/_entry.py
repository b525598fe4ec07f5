"""Checking a feature's ``entry = "module:attribute"`` against the files of its bundle.

Bundle code is untrusted: this module reads and parses it with ``ast`` and must never
import, compile to bytecode or execute it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from capsule._manifest._locator import KeyPath
from capsule._manifest._problems import Doc

__all__ = ["ENTRY_FORM", "check_entry", "check_entry_syntax"]

#: entry modules larger than this are refused (a feature's entry module is small)
MAX_MODULE_BYTES: Final = 4 << 20
ENTRY_FORM: Final = 'module:attribute with Python identifiers, e.g. "spellcheck:feature"'
_IDENTIFIER: Final = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRY: Final = re.compile(rf"({_IDENTIFIER}(?:\.{_IDENTIFIER})*):({_IDENTIFIER})")


def check_entry_syntax(value: str) -> str | None:
    """An error message for an entry that is not ``module:attribute``, else None."""
    if not value.isascii() or _ENTRY.fullmatch(value) is None:
        return f'entry "{value}" is not valid: expected {ENTRY_FORM}'
    return None


def _module_file(bundle: Path, module: str) -> Path | None:
    base = bundle.joinpath(*module.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _bound_names(body: list[ast.stmt]) -> Iterator[str]:
    """Names bound at module level, looking inside top-level if/try/with blocks."""
    for node in body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield from _target_names(target)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            if isinstance(node, ast.AugAssign) or node.value is not None:
                yield from _target_names(node.target)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                yield "*" if alias.name == "*" else (alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.If | ast.With | ast.AsyncWith):
            yield from _bound_names(node.body)
            if isinstance(node, ast.If):
                yield from _bound_names(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _bound_names(node.body)
            for handler in node.handlers:
                yield from _bound_names(handler.body)
            yield from _bound_names(node.orelse)
            yield from _bound_names(node.finalbody)


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _target_names(element)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def check_entry(bundle: Path, bundle_shown: str, entry: str, doc: Doc, key: KeyPath) -> None:
    """Report a missing entry module or attribute; parse the module, never import it."""
    module, _, attribute = entry.partition(":")
    relative = module.replace(".", "/")
    wanted = f"{relative}.py or {relative}/__init__.py"
    found = _module_file(bundle, module)
    if found is None:
        doc.error(
            key,
            f'entry module "{module}" is not in the bundle: expected {wanted} in {bundle_shown}',
        )
        return
    shown = f"{bundle_shown}/{found.relative_to(bundle).as_posix()}"
    try:
        real_bundle = bundle.resolve(strict=True)
        real = found.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        doc.error(key, f"cannot resolve entry module {shown}: {exc}")
        return
    if not real.is_relative_to(real_bundle):
        doc.error(key, f"entry module {shown} is a link to {real}, outside the bundle")
        return
    try:
        with real.open("rb") as handle:
            source = handle.read(MAX_MODULE_BYTES + 1)
    except OSError as exc:
        doc.error(key, f"cannot read entry module {shown}: {exc.strerror or exc}")
        return
    if len(source) > MAX_MODULE_BYTES:
        doc.error(key, f"entry module {shown} is larger than {MAX_MODULE_BYTES} bytes")
        return
    module_doc = Doc(shown, None, doc.sink)
    try:
        tree = ast.parse(source, filename=shown)
    except SyntaxError as exc:
        module_doc.error((), f"Python syntax error: {exc.msg}", line=exc.lineno)
        return
    except (ValueError, RecursionError, MemoryError) as exc:
        module_doc.error((), f"cannot parse the module: {type(exc).__name__}")
        return
    names = set(_bound_names(tree.body))
    if attribute not in names and "*" not in names:
        doc.error(
            key,
            f'entry attribute "{attribute}" is not assigned at the top level of {shown}: '
            f"define it there, e.g. {attribute} = Feature()",
        )
