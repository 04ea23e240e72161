"""The HTML page of a predict run: each image, its mask, its CAM and its estimate with the interval.

Pictures are linked relatively (`thumbs/`, `overlays/` beside the page), so the run folder opens from disk or
a zip without a server. Failed and flagged images come first; the page shows at most `max_rows` images (all
are in predictions.csv). A footer counts the pictures that loaded (the pipeline report's check), which the
headless-Chromium test reads.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from medal.atomic import write_text
from medal.pipeline.report import IMAGE_CHECK

PAGE = "predictions.html"
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:.3rem .5rem;vertical-align:middle;text-align:left}th{background:#eee}
img{height:10rem;width:auto;border:1px solid #ddd}.flag{color:#b00;font-weight:600}.bad{background:#fff3f0}
footer{margin-top:2rem;font-size:.8rem;color:#777}
"""


def _num(value: object, digits: int = 1) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(number) else f"{number:.{digits}f}"


def _img(rel: object, alt: str) -> str:
    if not isinstance(rel, str) or not rel:
        return ""
    return f'<img src="{html.escape(rel)}" alt="{html.escape(alt)}" loading="eager">'


def write_page(rows: pd.DataFrame, out_dir: Path, title: str, summary: list[str], max_rows: int) -> Path:
    """`predictions.html` in `out_dir` for the rows of predictions.csv."""
    esc = html.escape
    key = rows["status"].ne("ok") * 2 + rows["flag"].fillna("").ne("") * 1
    shown = rows.assign(_key=key).sort_values("_key", ascending=False, kind="stable").head(max_rows)
    body = [f"<h1>{esc(title)}</h1>"] + [f"<p>{esc(line)}</p>" for line in summary]
    if len(shown) < len(rows):
        body.append(f"<p>Showing {len(shown)} of {len(rows)} images (failed and flagged first); "
                    "every row is in predictions.csv.</p>")
    head = ["id", "radiograph and mask", "CAM", "sex", "bone age (months)", "interval", "spread",
            "segmentation confidence", "flag", "status"]
    body.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for r in shown.itertuples(index=False):
        interval = ("" if not _num(r.low) else "unbounded (too few calibration images)"
                    if math.isinf(float(r.high)) else f"{_num(r.low)}–{_num(r.high)}")
        status = esc(str(r.status)) + (f"<br><small>{esc(str(r.message))}</small>" if r.status != "ok" else "")
        cells = [esc(str(r.id)), _img(r.thumb, f"{r.id} mask"), _img(r.overlay, f"{r.id} CAM"), esc(str(r.sex)),
                 _num(r.boneage), interval, _num(r.spread), _num(r.seg_confidence, 3),
                 f'<span class="flag">{esc(str(r.flag))}</span>' if isinstance(r.flag, str) and r.flag else "",
                 status]
        cls = ' class="bad"' if r.status != "ok" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body.append("</tbody></table>")
    body.append('<footer id="image-check" data-loaded="" data-total="">pictures not checked (JavaScript off)</footer>')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_CSS}</style><script>{IMAGE_CHECK}</script></head><body>{''.join(body)}</body></html>")
    return write_text(out_dir / PAGE, page)
