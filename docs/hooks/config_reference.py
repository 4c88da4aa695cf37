"""Config reference generated from ``fedenv/config.py`` at build time (an MkDocs hook).

Every config field is documented once, by the attribute docstring under it in
``fedenv/config.py``. This module reads those docstrings with :mod:`ast` (they exist only in the
source, not at run time), together with each field's type, default and allowed range as written
there, and renders one Markdown table per config section. ``mkdocs.yml`` registers it as a hook:
``on_page_markdown`` replaces the marker ``<!-- config-reference -->`` in ``docs/config.md`` with
the tables, so the page is rebuilt from the code on every build and cannot go stale.

Without MkDocs: ``python docs/hooks/config_reference.py`` prints the tables;
``tests/test_docs.py`` calls :func:`read_sections` and checks it against the dataclasses.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "<!-- config-reference -->"
CONFIG_PAGE = "config.md"
CONFIG_SOURCE = Path(__file__).resolve().parents[2] / "fedenv" / "config.py"
ROOT_CLASS = "EnvConfig"
SECTION_BASE = "_Section"


@dataclass(frozen=True)
class FieldDoc:
    """One config field as written in the source."""

    name: str
    type: str
    """The value type (the first argument of ``Annotated[...]``), as written."""
    default: str
    """The default as written (``20e6``), or ``section`` for a nested section."""
    allowed: str
    """The allowed values from the ``Range``/``OneOf`` annotation ("" when none)."""
    doc: str
    section: str | None = None
    """The nested section's path when the field is one (``learning.surrogate``)."""


@dataclass(frozen=True)
class SectionDoc:
    """One config class: its YAML path, class name, docstring and fields."""

    path: str
    """Dotted key path (``""`` for the top level, ``learning.lora``)."""
    class_name: str
    doc: str
    fields: tuple[FieldDoc, ...]

    @property
    def anchor(self) -> str:
        return self.path.replace(".", "-") if self.path else "top-level"

    @property
    def title(self) -> str:
        return f"`{self.path}`" if self.path else "Top level"


def _literals(tree: ast.Module) -> dict[str, Any]:
    """Module-level names bound to literals (``PARADIGMS = (...)``, ``TASKS = {...}``)."""
    out: dict[str, Any] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name) and value is not None:
                try:
                    out[target.id] = ast.literal_eval(value)
                except ValueError:
                    pass
    return out


_OPS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _allowed(call: ast.Call, source: str, literals: dict[str, Any]) -> str:
    """``Range(gt=0, le=1e5)`` as "> 0, ≤ 1e5"; ``OneOf("a", *NAMES)`` as "a, b, c"."""
    name = call.func.id if isinstance(call.func, ast.Name) else ""
    if name == "Range":
        return ", ".join(
            f"{_OPS.get(k.arg or '', k.arg)} {ast.get_source_segment(source, k.value)}"
            for k in call.keywords
        )
    if name == "OneOf":
        choices: list[str] = []
        for arg in call.args:
            if (
                isinstance(arg, ast.Starred)
                and isinstance(arg.value, ast.Name)
                and arg.value.id in literals
            ):
                choices.extend(str(c) for c in literals[arg.value.id])
            elif isinstance(arg, ast.Constant):
                choices.append(str(arg.value))
            else:
                choices.append(ast.get_source_segment(source, arg) or "?")
        return ", ".join(f"`{c}`" for c in choices)
    return ast.get_source_segment(source, call) or ""


def _split_annotation(node: ast.expr, source: str, literals: dict[str, Any]) -> tuple[str, str]:
    """(type, allowed) of a field annotation, unwrapping ``Annotated[type, Range(...)]``."""
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Annotated"
    ):
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        kind = ast.get_source_segment(source, parts[0]) or ""
        meta = [_allowed(m, source, literals) for m in parts[1:] if isinstance(m, ast.Call)]
        return kind, "; ".join(m for m in meta if m)
    return ast.get_source_segment(source, node) or "", ""


def _is_classvar(node: ast.expr) -> bool:
    target = node.value if isinstance(node, ast.Subscript) else node
    return isinstance(target, ast.Name) and target.id == "ClassVar"


def _docstring(node: ast.stmt | None) -> str:
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ):
        return " ".join(node.value.value.split())
    return ""


def read_sections(path: str | Path = CONFIG_SOURCE) -> list[SectionDoc]:
    """Every config section reachable from ``EnvConfig``, top level first, nested sections after
    their parent (depth first, in field order), with their fields as written in ``path``."""
    source = Path(path).read_text()
    tree = ast.parse(source)
    literals = _literals(tree)
    classes = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(isinstance(b, ast.Name) and b.id == SECTION_BASE for b in node.bases)
    }
    if ROOT_CLASS not in classes:
        raise ValueError(f"{path}: no class {ROOT_CLASS} deriving from {SECTION_BASE}")
    out: list[SectionDoc] = []

    def visit(class_name: str, prefix: str) -> None:
        node = classes[class_name]
        body = node.body
        fields: list[FieldDoc] = []
        nested: list[tuple[str, str]] = []
        section_path = prefix
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            name = stmt.target.id
            if _is_classvar(stmt.annotation):
                if (
                    name == "_path"
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                ):
                    section_path = "" if class_name == ROOT_CLASS else stmt.value.value
                continue
            kind, allowed = _split_annotation(stmt.annotation, source, literals)
            doc = _docstring(body[i + 1] if i + 1 < len(body) else None)
            if kind in classes:
                child = f"{section_path}.{name}" if section_path else name
                nested.append((kind, child))
                fields.append(
                    FieldDoc(
                        name,
                        kind,
                        "section",
                        "",
                        doc or _docstring(classes[kind].body[0]),
                        section=child,
                    )
                )
                continue
            default = (
                ast.get_source_segment(source, stmt.value)
                if stmt.value is not None
                else "(required)"
            )
            fields.append(FieldDoc(name, kind, default or "", allowed, doc))
        out.append(
            SectionDoc(section_path, class_name, _docstring(body[0]) if body else "", tuple(fields))
        )
        for child_class, child_path in nested:
            visit(child_class, child_path)

    visit(ROOT_CLASS, "")
    return out


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (pipes, HTML brackets, emphasis markers)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def render(sections: list[SectionDoc]) -> str:
    """Markdown: one heading and one table (field, type, default, allowed, meaning) per section."""
    lines: list[str] = []
    for s in sections:
        lines += [f"## {s.title} — `{s.class_name}` {{#{s.anchor}}}", ""]
        if s.doc:
            lines += [_cell(s.doc), ""]
        lines += ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for f in s.fields:
            key = f"{s.path}.{f.name}" if s.path else f.name
            if f.section is not None:
                target = f.section.replace(".", "-")
                lines.append(f"| `{key}` | `{f.type}` | [section](#{target}) | | {_cell(f.doc)} |")
                continue
            lines.append(
                f"| `{key}` | `{f.type}` | `{f.default}` | {_cell(f.allowed)} | {_cell(f.doc)} |"
            )
        lines.append("")
    return "\n".join(lines)


def reference_markdown(path: str | Path = CONFIG_SOURCE) -> str:
    """The generated reference for the config source at ``path``."""
    return render(read_sections(path))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: fill the marker of ``docs/config.md`` with the generated tables."""
    if page.file.src_uri != CONFIG_PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(
            f"docs/{CONFIG_PAGE} lacks the marker {MARKER!r} that the config reference replaces"
        )
    return markdown.replace(MARKER, reference_markdown())


if __name__ == "__main__":  # pragma: no cover - a convenience for reading the output
    sys.stdout.write(reference_markdown(sys.argv[1] if len(sys.argv) > 1 else CONFIG_SOURCE))
