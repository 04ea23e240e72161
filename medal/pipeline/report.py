"""The pipeline report: one list of sections rendered as `report.md` and a self-contained `report.html`.

Images are copied into `images/` beside the report and linked relatively, so the folder can be zipped,
moved, or opened straight from disk in a browser without a server.
"""

from __future__ import annotations

import html
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    code: list[str] = field(default_factory=list)  # preformatted blocks (configuration)
    links: list[tuple[str, Path]] = field(default_factory=list)  # (text, file) linked relative to the report


def _copy_figures(sections: list[Section], out_dir: Path) -> dict[Path, str]:
    """Copy every figure into `out_dir/images/`; return source -> relative link."""
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    links: dict[Path, str] = {}
    for i, fig in enumerate(f for s in sections for f in s.figures):
        src = Path(fig.path)
        if src in links:
            continue
        dest = images / f"{i:02d}_{src.name}"
        if src.resolve() != dest.resolve():
            shutil.copyfile(src, dest)
        links[src] = f"images/{dest.name}"
    return links


def _href(path: Path, out_dir: Path) -> str:
    """A link from the report's folder to `path` (relative, so the two folders can move together)."""
    return Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix()


def _markdown(title: str, sections: list[Section], links: dict[Path, str], out_dir: Path) -> str:
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for para in sec.paragraphs:
            out += [para, ""]
        out += [f"- [{text}]({_href(path, out_dir)})" for text, path in sec.links]
        out += [""] if sec.links else []
        for tab in sec.tables:
            if tab.caption:
                out += [f"*{tab.caption}*", ""]
            out.append("| " + " | ".join(tab.headers) + " |")
            out.append("|" + "---|" * len(tab.headers))
            out += ["| " + " | ".join(row) + " |" for row in tab.rows]
            out.append("")
        for fig in sec.figures:
            out += [f"![{fig.caption}]({links[Path(fig.path)]})", "", f"*{fig.caption}*", ""]
        for block in sec.code:
            out += ["```", block.rstrip(), "```", ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
h1{border-bottom:2px solid #444}h2{margin-top:2.2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8rem 0}td,th{border:1px solid #bbb;padding:.25rem .6rem;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}caption{caption-side:top;font-style:italic}
figure{display:inline-block;margin:.6rem;vertical-align:top;max-width:100%}
figure img{max-width:100%;max-height:34rem;border:1px solid #ddd}figcaption{font-size:.9rem;color:#555}
footer{margin-top:3rem;font-size:.8rem;color:#777}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;font-size:.8rem}
"""

# Counts images that loaded; a browser test (and a reader) can see broken figures at a glance.
IMAGE_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var foot = document.getElementById('image-check');
  foot.dataset.loaded = ok; foot.dataset.total = imgs.length;
  foot.textContent = ok + ' of ' + imgs.length + ' figures loaded';
});
"""


def _html(title: str, sections: list[Section], links: dict[Path, str], out_dir: Path) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    toc = "".join(f'<li><a href="#s{i}">{esc(s.title)}</a></li>' for i, s in enumerate(sections))
    body.append(f"<nav><ol>{toc}</ol></nav>")
    for i, sec in enumerate(sections):
        body.append(f'<section id="s{i}"><h2>{esc(sec.title)}</h2>')
        body += [f"<p>{esc(p)}</p>" for p in sec.paragraphs]
        if sec.links:
            body.append("<ul>" + "".join(f'<li><a href="{esc(_href(path, out_dir))}">{esc(text)}</a></li>'
                                         for text, path in sec.links) + "</ul>")
        for tab in sec.tables:
            head = "".join(f"<th>{esc(h)}</th>" for h in tab.headers)
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in tab.rows)
            cap = f"<caption>{esc(tab.caption)}</caption>" if tab.caption else ""
            body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        for fig in sec.figures:
            src = esc(links[Path(fig.path)])
            body.append(f'<figure><img src="{src}" alt="{esc(fig.caption)}">'
                        f"<figcaption>{esc(fig.caption)}</figcaption></figure>")
        body += [f"<pre>{esc(block)}</pre>" for block in sec.code]
        body.append("</section>")
    body.append('<footer id="image-check" data-loaded="" data-total="">figures not checked (JavaScript off)</footer>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_CSS}</style><script>{IMAGE_CHECK}</script></head><body>{''.join(body)}</body></html>")


def write_report(title: str, sections: list[Section], out_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` (+ `images/`) into `out_dir`; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    links = _copy_figures(sections, out)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(_markdown(title, sections, links, out))
    html_path.write_text(_html(title, sections, links, out))
    return md_path, html_path
