"""The report's content as plain sections, rendered to Markdown and to self-contained HTML.

Both files come from the same `Document`, so they always say the same thing. Every piece of text
from the report is escaped on the way out (a reason may contain anything, `<script>` included).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    file_name: str
    caption: str


Block = str | Table | Figure
"""A paragraph, a table or a chart."""


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Document:
    title: str
    sections: tuple[Section, ...]


_MARKDOWN_SPECIAL = re.compile(r"([\\`*<>|\[\]])")


def _md(text: str) -> str:
    """Text safe inside a Markdown paragraph or table cell: one line, special characters escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md(cell) for cell in table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _md_block(block: Block) -> str:
    if isinstance(block, Table):
        return _md_table(block)
    if isinstance(block, Figure):
        return f"![{_md(block.caption)}]({block.file_name})"
    return _md(block)


def to_markdown(document: Document) -> str:
    parts = [f"# {_md(document.title)}"]
    for section in document.sections:
        parts.append(f"## {_md(section.title)}")
        parts += [_md_block(block) for block in section.blocks]
    return "\n\n".join(parts) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1rem 0; }
img { max-width: 100%; }
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_figure(figure: Figure, images: Mapping[str, bytes]) -> str:
    data = base64.b64encode(images[figure.file_name]).decode("ascii")
    caption = html.escape(figure.caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def _html_block(block: Block, images: Mapping[str, bytes]) -> str:
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return _html_figure(block, images)
    return f"<p>{html.escape(block)}</p>"


def to_html(document: Document, images: Mapping[str, bytes]) -> str:
    """One HTML file with no external assets: `images` (file name -> PNG bytes) become data URIs."""
    body = [f"<h1>{html.escape(document.title)}</h1>"]
    for section in document.sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block, images) for block in section.blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(document.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
