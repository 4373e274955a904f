"""A report as a list of blocks (headings, paragraphs, tables, figures), written as Markdown and HTML.

The same blocks give `report.md` (figures as relative links to the PNG files
beside it) and `report.html` (one self-contained file: the same PNGs embedded
as base64 data URIs, no script, no external resource).
"""

from __future__ import annotations

import base64
import dataclasses
import html
from pathlib import Path
from typing import Sequence, Union


@dataclasses.dataclass(frozen=True)
class Heading:
  text: str
  level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
  text: str


@dataclasses.dataclass(frozen=True)
class Table:
  header: Sequence[str]
  rows: Sequence[Sequence[str]]
  caption: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
  file: str  # a PNG in the report folder
  caption: str


Block = Union[Heading, Paragraph, Table, Figure]


def to_markdown(blocks: Sequence[Block]) -> str:
  out: list[str] = []
  for block in blocks:
    if isinstance(block, Heading):
      out.append("#" * block.level + " " + block.text)
    elif isinstance(block, Paragraph):
      out.append(block.text)
    elif isinstance(block, Table):
      lines = ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
      lines += ["| " + " | ".join(row) + " |" for row in block.rows]
      if block.caption:
        lines.insert(0, block.caption + "\n")
      out.append("\n".join(lines))
    elif isinstance(block, Figure):
      out.append(f"![{block.caption}]({block.file})\n\n*{block.caption}*")
  return "\n\n".join(out) + "\n"


_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
  """Escaped text with Markdown's `code` spans as <code>."""
  parts = html.escape(text).split("`")
  return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: Sequence[Block], folder: Path, title: str) -> str:
  """One self-contained HTML page; figures read from `folder` and embedded as base64 PNGs."""
  body: list[str] = []
  for block in blocks:
    if isinstance(block, Heading):
      body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
    elif isinstance(block, Paragraph):
      body.append(f"<p>{_inline(block.text)}</p>")
    elif isinstance(block, Table):
      caption = f"<caption>{_inline(block.caption)}</caption>" if block.caption else ""
      head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
      rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                     for row in block.rows)
      body.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    elif isinstance(block, Figure):
      data = base64.b64encode((folder / block.file).read_bytes()).decode("ascii")
      body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}"'
                  f' data-file="{html.escape(block.file)}"><figcaption>{_inline(block.caption)}'
                  "</figcaption></figure>")
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
          + "\n".join(body) + "\n</body></html>\n")
