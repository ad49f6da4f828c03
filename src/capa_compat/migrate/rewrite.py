"""Rewrites one file's legacy imports and setting strings, keeping every other byte as it was."""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass, field

from tokenize_rt import NON_CODING_TOKENS, Offset, Token, src_to_tokens, tokens_to_src

from .rules import ModuleRule, Rules, Status

_PLAIN_STRING = re.compile(
    r"""(?P<prefix>[rRuU]?)(?P<quote>'''|\"\"\"|'|")(?P<body>.*)(?P=quote)""", re.S
)


@dataclass(frozen=True)
class Finding:
    """Something the report shows: a use of a name the shim lacks or treats differently."""

    line: int
    col: int
    library: str
    name: str
    status: Status
    note: str


@dataclass
class Result:
    source: str
    changed: bool = False
    edits: Counter[str] = field(default_factory=Counter)  # edits by library
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class _Edit:
    """Replace tokens [start, end) with ``text``; applied from the end of the file backwards."""

    start: int
    end: int
    text: str
    library: str


def rewrite_source(source: str, rules: Rules) -> Result:
    """The rewritten source, or the input unchanged (with ``error``) when it does not parse."""
    if not any(needle in source for needle in rules.needles):
        return Result(source)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        return Result(source, error=f"does not parse: {exc}")
    tokens = src_to_tokens(source)
    index = {t.offset: i for i, t in enumerate(tokens) if t.name not in NON_CODING_TOKENS}
    newline = "\r\n" if "\r\n" in source else "\n"
    visitor = _Visitor(rules, tokens, index, newline)
    visitor.lines = source.splitlines()
    visitor.visit(tree)
    if not visitor.edits:
        return Result(source, findings=visitor.findings)
    for edit in sorted(visitor.edits, key=lambda e: e.start, reverse=True):
        tokens[edit.start:edit.end] = [Token("CODE", edit.text)]
    new_source = tokens_to_src(tokens)
    edits = Counter(edit.library for edit in visitor.edits)
    return Result(new_source, new_source != source, edits, visitor.findings)


class _Visitor(ast.NodeVisitor):
    def __init__(
        self, rules: Rules, tokens: list[Token], index: dict[Offset, int], newline: str
    ) -> None:
        self.rules, self.tokens, self.index, self.newline = rules, tokens, index, newline
        self.lines: list[str] = []
        self.edits: list[_Edit] = []
        self.findings: list[Finding] = []
        self.module_aliases: dict[str, ModuleRule] = {}  # local name -> rule, from `import x`

    # --- helpers --------------------------------------------------------------------------------

    def _token_at(self, node: ast.expr | ast.stmt | ast.alias) -> int:
        return self.index[Offset(node.lineno, node.col_offset)]

    def _next_code(self, i: int) -> int:
        i += 1
        while self.tokens[i].name in NON_CODING_TOKENS:
            i += 1
        return i

    def _find(self, i: int, src: str) -> int:
        while self.tokens[i].src != src:
            i += 1
        return i

    def _report(self, node: ast.AST, rule: ModuleRule, name: str) -> None:
        name_rule = rule.names.get(name)
        if name_rule is None:
            return  # a name the shim does not list simply stays with the legacy library
        status, note = name_rule.status, name_rule.note
        if status in (Status.UNSUPPORTED, Status.DIFFERENT):
            self.findings.append(
                Finding(
                    getattr(node, "lineno", 0), getattr(node, "col_offset", 0), rule.library,
                    f"{rule.old}.{name}", status, note,
                )
            )

    # --- from x import a, b ----------------------------------------------------------------------

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        rule = self.rules.modules.get(node.module or "") if node.level == 0 else None
        if rule is None:
            return
        for alias in node.names:
            if alias.name != "*":
                self._report(alias, rule, alias.name)
        star = any(a.name == "*" for a in node.names)
        moving = [a for a in node.names if a.name != "*" and rule.moves(a.name)]
        if star and not rule.whole:
            # `from flask import *` also needs the names the shim does not have: say so.
            self.findings.append(
                Finding(
                    node.lineno, node.col_offset, rule.library, f"{rule.old}.*",
                    Status.DIFFERENT,
                    f"left as is: import the names {rule.new} provides from it explicitly",
                )
            )
            return
        if star or len(moving) == len(node.names):
            self._replace_module(node, rule)
        elif moving:
            self._split(node, rule, moving)

    def _module_span(self, node: ast.ImportFrom) -> tuple[int, int]:
        start = self._next_code(self._token_at(node))  # first token after `from`
        end = self._find(start, "import")
        while self.tokens[end - 1].name in NON_CODING_TOKENS:
            end -= 1
        return start, end

    def _replace_module(self, node: ast.ImportFrom, rule: ModuleRule) -> None:
        start, end = self._module_span(node)
        self.edits.append(_Edit(start, end, rule.new, rule.library))

    def _split(self, node: ast.ImportFrom, rule: ModuleRule, moving: list[ast.alias]) -> None:
        """Move some names to the shim: a new import line, and the names struck from this one."""
        names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in moving)
        first = self._token_at(node)
        before = self.lines[node.lineno - 1].encode()[: node.col_offset].decode()
        separator = f"{self.newline}{before}" if not before.strip() else "; "
        self.edits.append(
            _Edit(first, first, f"from {rule.new} import {names}{separator}", rule.library)
        )
        for alias in moving:
            start = self._token_at(alias)
            end = start
            if alias.asname is not None:
                end = self._find(self._next_code(start), alias.asname)
            end = self._next_code(end)
            if self.tokens[end].src == ",":
                end = self._next_code(end)  # strike "name, " up to the next name
            elif alias is node.names[-1]:
                # The last name: strike the comma before it instead.
                previous = start - 1
                while self.tokens[previous].src != ",":
                    previous -= 1
                start = previous
            self.edits.append(_Edit(start, end, "", rule.library))

    # --- import x, import x.y as z ----------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            rule = self.rules.modules.get(alias.name)
            if rule is None:
                continue
            root = alias.name.split(".", 1)[0]
            root_rule = self.rules.modules.get(root)
            if not rule.whole:
                self._report_module(alias, rule, f"only some names of {rule.old} move")
            elif alias.asname is not None:
                self._rename_import(alias, rule, rule.new)
                self.module_aliases[alias.asname] = rule
            elif alias.name == root:
                self._rename_import(alias, rule, f"{rule.new} as {root}")
                self.module_aliases[root] = rule
            elif root_rule is not None and root_rule.whole:
                # `import celery.schedules` binds `celery`: load the submodule, bind the shim.
                self._rename_import(alias, rule, f"{rule.new}, {root_rule.new} as {root}")
                self.module_aliases[root] = root_rule
            else:
                self._report_module(alias, rule, f"`import {alias.name}` binds `{root}`")

    def _report_module(self, alias: ast.alias, rule: ModuleRule, why: str) -> None:
        self.findings.append(
            Finding(
                alias.lineno, alias.col_offset, rule.library, rule.old, Status.DIFFERENT,
                f"not rewritten ({why}): write `from {rule.new} import ...` for the names used",
            )
        )

    def _rename_import(self, alias: ast.alias, rule: ModuleRule, text: str) -> None:
        """Replace the dotted module name of ``alias`` (its ``as`` part stays)."""
        start = end = self._token_at(alias)
        for _ in range(alias.name.count(".") * 2):
            end = self._next_code(end)
        self.edits.append(_Edit(start, end + 1, text, rule.library))

    # --- uses, and setting strings ----------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.module_aliases:
            self._report(node, self.module_aliases[node.value.id], node.attr)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str):
            return
        rule = self.rules.strings.get(node.value)
        if rule is None:
            return
        i = self.index.get(Offset(node.lineno, node.col_offset))
        if i is None or self.tokens[i].name != "STRING":
            return
        literal = _PLAIN_STRING.fullmatch(self.tokens[i].src)
        # Only a single plain literal: implicit concatenation or escapes are left to a person.
        if literal is None or literal["body"] != rule.old or "\\" in literal["body"]:
            return
        if self.tokens[self._next_code(i)].name == "STRING":
            return
        prefix, quote = literal["prefix"], literal["quote"]
        self.edits.append(_Edit(i, i + 1, f"{prefix}{quote}{rule.new}{quote}", rule.library))
