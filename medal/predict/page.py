"""The HTML page of a predict run: each image, its mask, its CAM and its estimate with the interval.

Pictures are linked relatively (`thumbs/`, `overlays/` beside the page), so the run folder opens from disk or
a zip without a server. The page opens with the counts by status, then the estimates (flagged ones first, at
most `max_rows` with pictures; all are in predictions.csv), then every image without an estimate on one line
with its status and reason, so a run of mostly unreadable files still shows its estimates first. A footer counts the pictures that loaded (the pipeline report's check), which the
headless-Chromium test reads.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from medal.atomic import write_text
from medal.pipeline.report import IMAGE_CHECK
from medal.predict.rows import STATUSES

PAGE = "predictions.html"
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:.3rem .5rem;vertical-align:middle;text-align:left}th{background:#eee}
img{height:10rem;width:auto;border:1px solid #ddd}.flag{color:#b00;font-weight:600}.bad{background:#fff3f0}ul.bad{padding:.5rem 2rem}
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


def _counts(rows: pd.DataFrame) -> str:
    """The summary table: how many rows have each status (in `STATUSES` order), estimates first."""
    counts = rows["status"].value_counts()
    known = [st for st in STATUSES if st in counts.index] + sorted(set(counts.index) - set(STATUSES))
    cells = "".join(f"<tr><td>{html.escape(str(st))}</td><td>{int(counts[st])}</td></tr>" for st in known)
    return (f'<table id="status-counts"><thead><tr><th>status</th><th>images</th></tr></thead><tbody>{cells}'
            f"<tr><th>all</th><th>{len(rows)}</th></tr></tbody></table>")


def _age(age: object, source: object, gap: object, gap_low: object, gap_high: object, sds: object,
         assessment: object) -> str:
    """The clinician's cells of an estimate: chronological age (source), gap with interval, SDS, assessment."""
    esc = html.escape
    if not _num(age):
        return "<td>not given</td><td></td><td></td><td>no chronological age</td>"
    return (f"<td>{_num(age)} <small>({esc(str(source))})</small></td>"
            f"<td>{_num(gap)} ({_num(gap_low)} to {_num(gap_high)})</td><td>{_num(sds, 2)}</td>"
            f"<td>{esc(str(assessment))}</td>")


def write_page(rows: pd.DataFrame, out_dir: Path, title: str, summary: list[str], max_rows: int) -> Path:
    """`predictions.html` in `out_dir` for the rows of predictions.csv: counts by status, the estimates (flagged
    first, with pictures, at most `max_rows`), then every image without an estimate, one line each."""
    esc = html.escape
    ok = rows[rows["status"] == "ok"]
    shown = ok.assign(_key=ok["flag"].fillna("").ne("")).sort_values("_key", ascending=False,
                                                                       kind="stable").head(max_rows)
    refused = rows[rows["status"] != "ok"]
    body = [f"<h1>{esc(title)}</h1>"] + [f"<p>{esc(line)}</p>" for line in summary] + [_counts(rows)]
    body.append(f"<h2>Estimates ({len(ok)})</h2>")
    if len(shown) < len(ok):
        body.append(f"<p>Showing {len(shown)} of {len(ok)} estimates (flagged first); every row is in "
                    "predictions.csv.</p>")
    body.append("<p>Chronological age, gap and interval in months; SDS against the Greulich-Pyle standard "
                "deviations; advanced or delayed only where the SDS and the whole interval lie beyond 2 SD.</p>")
    head = ["id", "radiograph and mask", "CAM", "sex", "bone age (months)", "interval", "spread",
            "segmentation confidence", "flag", "chronological age", "bone age - age (interval)", "SDS",
            "assessment"]
    body.append('<table id="estimates"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head)
                + "</tr></thead><tbody>")
    for r in shown.itertuples(index=False):
        interval = f"{_num(r.low)}–{_num(r.high)}"
        cells = [esc(str(r.id)), _img(r.thumb, f"{r.id} mask"), _img(r.overlay, f"{r.id} CAM"), esc(str(r.sex)),
                 _num(r.boneage), interval, _num(r.spread), _num(r.seg_confidence, 3),
                 f'<span class="flag">{esc(str(r.flag))}</span>' if isinstance(r.flag, str) and r.flag else ""]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + _age(r.chronological_age, r.age_source, r.age_gap, r.age_gap_low, r.age_gap_high, r.sds, r.assessment)
                    + "</tr>")
    body.append("</tbody></table>")
    body.append(f"<h2>Without an estimate ({len(refused)})</h2>")
    if len(refused):
        items = "".join(f'<li><code>{esc(str(r.id))}</code> <b>{esc(str(r.status))}</b>: '
                        f"{esc(str(r.message).splitlines()[0] if str(r.message) else '')}</li>"
                        for r in refused.itertuples(index=False))
        body.append(f'<ul id="refused" class="bad">{items}</ul>')
    body.append('<footer id="image-check" data-loaded="" data-total="">pictures not checked (JavaScript off)</footer>')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_CSS}</style><script>{IMAGE_CHECK}</script></head><body>{''.join(body)}</body></html>")
    return write_text(out_dir / PAGE, page)
