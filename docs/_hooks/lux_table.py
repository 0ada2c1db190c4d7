"""An mkdocs hook: the one table of every Lux layer on ``layers/index.md``, assembled at build
time from the tables of the family pages (``layers/*.md``), so no row is written twice.

A family page's table starts with the header ``| Lux | luxc | parameters ...``; each of its rows
goes into the index, in page order, with a link to the page. ``<!-- lux-table -->`` on the index
is replaced by the assembled table.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "<!-- lux-table -->"
HEADER = "| Lux | luxc |"


def table_rows(page: Path) -> list[str]:
    """The body rows of the Lux table(s) of one family page."""
    rows, inside = [], False
    for line in page.read_text().splitlines():
        if line.startswith(HEADER):
            inside = True
        elif inside and line.startswith("|---"):
            continue
        elif inside and line.startswith("|"):
            rows.append(line)
        else:
            inside = False
    return rows


def assembled(layers_dir: Path) -> str:
    """The index's table: every family page's rows, each with a link to its page."""
    out = ["| Lux | luxc | parameters (names, shapes) | difference from Lux | page |",
           "|---|---|---|---|---|"]
    for page in sorted(layers_dir.glob("*.md")):
        if page.name == "index.md":
            continue
        title = page.read_text().splitlines()[0].lstrip("# ").split(" (")[0]
        out += [f"{row.rstrip().rstrip('|').rstrip()} | [{title}]({page.name}) |"
                for row in table_rows(page)]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "layers/index.md" or MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, assembled(Path(config["docs_dir"]) / "layers"))
