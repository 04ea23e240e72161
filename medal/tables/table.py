"""Ablation tables from runs: rows and columns are config keys, a cell is one metric (mean over seeds).

Figure 12 of the paper is the preset `figure12`: rows = fine-tune mode, columns = enhancement x cohort, cell =
`test/mae` of the run trained and tested on that cohort. A cell with no run is shown as '—', a cell whose runs
all failed as 'failed' — never as 0, so a broken sweep can't pass for a result.
The pseudo key `metric` puts several metrics on an axis (e.g. one model scored per sex:
`columns=[metric]`, `metrics=[test/mae, test/mae_male, test/mae_female]`).
Baseline rows (`baselines`: label -> metric) follow the table's rows: per column, the mean of a reference
metric over that column's runs, e.g. the phantoms' noise floor and the train-mean predictor beside Figure 12's
MAEs. A baseline no run recorded (the floor on real data) gets no row.
Paired differences (`reference_row`, or `all_pairs`): every row against the reference row, or every pair of rows,
within each column, paired per seed/fold and per test image where the runs' predictions allow (`paired.py`),
Holm-corrected over the whole table; a cell whose difference from the reference holds is marked `†`.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medal.errors import MedalError
from medal.models.stages import FINETUNE_MODES
from medal.tables.folder_runs import RunResult
from medal.tables.paired import PAIR_BY, Comparison, Pairing, fmt_p, with_holm

METRIC_AXIS = "metric"
MISSING_MARK, FAILED_MARK = "—", "failed"
HOLDS_MARK = "†"  # beside a cell whose paired difference from the reference row holds after Holm's correction

# Figure 12 of the paper (MAE in months, RSNA test set, Xception at 299 px); DOMAIN.md.
_PAPER_ROWS = {  # mode: (enhanced: all, male, female), (not enhanced: all, male, female)
    "above_fc": ((28.168, 28.271, 25.982), (28.731, 30.388, 26.180)),
    "above_exit": ((12.695, 10.082, 11.242), (16.635, 14.702, 12.915)),
    "above_mid": ((11.213, 8.339, 8.115), (11.511, 8.146, 11.835)),
    "above_entry": ((9.796, 7.626, 8.337), (9.695, 9.175, 8.060)),
    "all": ((9.141, 6.923, 7.265), (8.305, 8.923, 7.666)),
    "ptl": ((7.664, 5.991, 6.263), (8.074, 7.495, 7.256)),
}
FIGURE12_PAPER: dict[tuple[str, ...], float] = {
    (mode, enhance, cohort): value
    for mode, blocks in _PAPER_ROWS.items()
    for enhance, values in zip(("gan", "none"), blocks, strict=True)
    for cohort, value in zip(("all", "male", "female"), values, strict=True)
}


@dataclass(frozen=True)
class TableSpec:
    """What to tabulate. `orders` fixes value order (and the expected cells) per key; `labels` renames
    values (`"value"` or `"key=value"`, the latter winning) and keys (the row header)."""

    rows: str
    columns: tuple[str, ...]
    metric: str | None = None
    metrics: tuple[str, ...] = ()
    orders: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    title: str = ""
    decimals: int = 3
    best: str | None = None  # "min" or "max": bold the best value of each column
    published: Mapping[tuple[str, ...], float] | None = None  # published numbers per cell (the paper's)
    published_name: str = "paper"
    baselines: Mapping[str, str] = field(default_factory=dict)  # row label -> metric, per column (not with `metric` axes)
    reference_row: Any = None  # paired differences of every row against this row, per column
    all_pairs: bool = False  # paired differences of every pair of rows instead
    pair_by: tuple[str, ...] = PAIR_BY  # config keys whose values pair runs across rows (seed, fold)
    alpha: float = 0.05  # family-wise error rate of Holm's correction over the table's comparisons
    resamples: int = 10_000  # of the per-image paired bootstrap

    def __post_init__(self) -> None:
        axes = (self.rows, *self.columns)
        if METRIC_AXIS in axes and not self.metrics:
            raise MedalError("table: the `metric` axis needs table.metrics=[...] (e.g. [test/mae,test/mae_male])")
        if METRIC_AXIS not in axes and not self.metric:
            raise MedalError("table.metric is not set; name the metric of a cell, e.g. table.metric=test/mae")
        if self.best not in (None, "min", "max"):
            raise MedalError(f"table.best={self.best!r}: use min, max or null")
        if self.baselines and METRIC_AXIS in axes:
            raise MedalError("table.baselines: baseline rows need one metric per cell; drop them or the `metric` axis")
        if self.reference_row is not None and self.all_pairs:
            raise MedalError(f"table.reference={self.reference_row} and table.all_pairs=true: choose one")
        if not 0 < self.alpha < 1 or self.resamples < 100:
            raise MedalError(f"table.alpha={self.alpha}, table.bootstrap={self.resamples}: alpha in (0, 1), "
                             ">= 100 resamples")


FIGURE12 = TableSpec(
    rows="finetune.name",
    columns=("enhance.name", "cohort.name"),
    metric="test/mae",
    orders={"finetune.name": FINETUNE_MODES, "enhance.name": ("gan", "none"),
            "cohort.name": ("all", "male", "female")},
    labels={"finetune.name": "fine-tune", "above_fc": "above FC", "above_exit": "above exit",
            "above_mid": "above middle", "above_entry": "above entry", "finetune.name=all": "all layers",
            "ptl": "PTL", "ptl_paper": "PTL, paper's text", "ptl_discriminative": "PTL, ULMFiT rates",
            "ptl_restart": "PTL, decay restarted", "gan": "enhanced", "none": "not enhanced"},
    title="Figure 12: test MAE (months) by fine-tune mode, with/without enhancement, per cohort",
    best="min",
    published=FIGURE12_PAPER,
    baselines={"noise floor": "test/mae_floor", "mean predictor": "test/mae_mean_predictor"},
)
PRESETS: dict[str, TableSpec] = {"figure12": FIGURE12}


@dataclass
class Cell:
    """The runs that landed in one cell: their metric values and how many of them failed."""

    values: list[float] = field(default_factory=list)
    failed: int = 0
    runs: list[RunResult] = field(default_factory=list)  # the run of each value, for paired comparisons

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def state(self) -> str:
        if self.values:
            return "ok"
        return "failed" if self.failed else "missing"


@dataclass
class Table:
    spec: TableSpec
    row_values: list[Any]
    column_values: list[tuple[Any, ...]]
    cells: dict[tuple[Any, tuple[Any, ...]], Cell]
    compare: bool = False
    baseline_cells: dict[tuple[str, tuple[Any, ...]], Cell] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)  # Holm-corrected over the table
    reference: Any = None  # the row the comparisons are against (spec.reference_row, as the runs spell it)

    @property
    def baseline_rows(self) -> list[str]:
        """The baselines some run recorded, in the spec's order."""
        return [label for label in self.spec.baselines
                if any(self.baseline_cells.get((label, c), Cell()).values for c in self.column_values)]

    def cell(self, row: Any, column: Sequence[Any]) -> Cell:
        return self.cells.get((row, tuple(column)), Cell())

    def counts(self) -> dict[str, int]:
        """How many cells are filled, failed, missing (what `medal table` reports as its metrics)."""
        states = [self.cell(r, c).state for r in self.row_values for c in self.column_values]
        return {state: states.count(state) for state in ("ok", "failed", "missing")}

    # -- rendering ---------------------------------------------------------------------------------------
    def _label(self, key: str, value: Any) -> str:
        labels = self.spec.labels
        return str(labels.get(f"{key}={value}", labels.get(str(value), value)))

    def column_label(self, column: Sequence[Any]) -> str:
        return " / ".join(self._label(k, v) for k, v in zip(self.spec.columns, column, strict=True))

    def _best(self) -> dict[tuple[Any, ...], float]:
        if self.spec.best is None:
            return {}
        pick = min if self.spec.best == "min" else max
        best = {}
        for column in self.column_values:
            means = [m for r in self.row_values if (m := self.cell(r, column).mean) is not None]
            if means:
                best[column] = pick(means)
        return best

    def format_cell(self, cell: Cell) -> str:
        d = self.spec.decimals
        if cell.state != "ok":
            return FAILED_MARK if cell.state == "failed" else MISSING_MARK
        text = f"{cell.mean:.{d}f}" if cell.std is None else f"{cell.mean:.{d}f} ± {cell.std:.{d}f}"
        text += f" (n={len(cell.values)})"
        if cell.failed:
            text += f" ({cell.failed} failed)"
        return text

    def _published(self, row: Any, column: Sequence[Any]) -> float | None:
        return (self.spec.published or {}).get((str(row), *map(str, column)))

    def _display_rows(self) -> list[list[tuple[str, bool]]]:
        """Each row as (text, is best of its column) pairs: the row label, our cells, then published cells."""
        best = self._best()
        lines = []
        for row in self.row_values:
            line = [(self._label(self.spec.rows, row), False)]
            for column in self.column_values:
                cell = self.cell(row, column)
                mark = f" {HOLDS_MARK}" if (row, column) in self.marked() else ""
                line.append((self.format_cell(cell) + mark, cell.mean is not None and best.get(column) == cell.mean))
            if self.compare:
                for column in self.column_values:
                    ref = self._published(row, column)
                    line.append((MISSING_MARK if ref is None else f"{ref:.{self.spec.decimals}f}", False))
            lines.append(line)
        for label in self.baseline_rows:
            line = [(label, False)]
            for column in self.column_values:  # the same test images give every run the same value: no spread
                mean = self.baseline_cells.get((label, column), Cell()).mean
                line.append((MISSING_MARK if mean is None else f"{mean:.{self.spec.decimals}f}", False))
            if self.compare:
                line += [(MISSING_MARK, False)] * len(self.column_values)
            lines.append(line)
        return lines

    def marked(self) -> set[tuple[Any, tuple[Any, ...]]]:
        """Cells whose difference from the reference row (of their column) holds beyond chance."""
        if self.reference is None:
            return set()
        return {c.a for c in self.comparisons if c.holds(self.spec.alpha) and c.b == (self.reference, c.a[1])}

    def metric_of(self, row: Any, column: Sequence[Any]) -> str:
        """The metric a cell holds (the `metric` axis's value where the table has one)."""
        axes = dict(zip((self.spec.rows, *self.spec.columns), (row, *column), strict=True))
        return str(axes[METRIC_AXIS]) if METRIC_AXIS in axes else str(self.spec.metric)

    def comparison_label(self, comparison: Comparison) -> tuple[str, str]:
        """(column, "a − b") as the outputs write them; a comparison across columns names both cells."""
        (row_a, col_a), (row_b, col_b) = comparison.a, comparison.b
        a, b = self._label(self.spec.rows, row_a), self._label(self.spec.rows, row_b)
        if col_a == col_b:
            return self.column_label(col_a), f"{a} − {b}"
        return "", f"{a} / {self.column_label(col_a)} − {b} / {self.column_label(col_b)}"

    def comparison_note(self) -> str:
        """What the comparisons are and which pairing each used: the footnote under the table."""
        tested = [c for c in self.comparisons if c.difference is not None]
        if not self.comparisons:
            return ""
        held = sum(c.holds(self.spec.alpha) for c in tested)
        what = (f"every row against {self._label(self.spec.rows, self.reference)}"
                if self.reference is not None else "every pair of rows")
        how = sorted({c.paired_by.split(" (")[0] + (" x images" if "images" in c.paired_by else "")
                      for c in tested})
        note = (f"Paired differences ({what}, within each column): {held} of {len(tested)} hold beyond chance "
                f"(Holm-adjusted p < {self.spec.alpha} over the {len(tested)}); paired by "
                f"{', '.join(how) or 'nothing'}: per unit, the exact sign-flip test (95% t interval); per test "
                "image where the runs' predictions.csv share a test set, a paired bootstrap over units and images.")
        if self.reference is not None:
            note += f" {HOLDS_MARK} = differs from {self._label(self.spec.rows, self.reference)}."
        untested = len(self.comparisons) - len(tested)
        if untested:
            note += f" {untested} comparison(s) had no test (see the list)."
        return note

    def comparison_rows(self) -> list[list[str]]:
        """One row of text per comparison: column, a − b, difference, 95% CI, p, Holm p, holds, paired by, note."""
        d = self.spec.decimals
        rows = []
        for c in self.comparisons:
            column, label = self.comparison_label(c)
            diff = c.difference
            if diff is None:
                rows.append([column, label, "–", "–", "–", "–", "no test", c.paired_by or "–", c.note])
                continue
            rows.append([column, label, f"{diff.mean:+.{d}f}", f"[{diff.low:+.{d}f}, {diff.high:+.{d}f}]",
                         fmt_p(diff.p), fmt_p(c.p_holm), "yes" if c.holds(self.spec.alpha) else "no", c.paired_by,
                         c.note])
        return rows

    COMPARISON_HEADS = ("column", "difference", "Δ", "95% CI", "p", "p (Holm)", "holds", "paired by", "note")

    def comparisons_markdown(self) -> str:
        if not self.comparisons:
            return ""
        lines = ["| " + " | ".join(self.COMPARISON_HEADS) + " |", "|---|---|---:|---|---:|---:|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.comparison_rows()]
        return "\n".join(lines) + "\n"

    def comparisons_csv(self) -> str:
        """Full precision: one line per comparison (cells a and b by their keys)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["a_row", "a_column", "b_row", "b_column", "metric", "difference", "low", "high", "p",
                         "p_holm", "holds", "units", "images", "method", "paired_by", "note"])
        for c in self.comparisons:
            d = c.difference
            numbers = ([repr(d.mean), repr(d.low), repr(d.high), repr(d.p), repr(c.p_holm),
                        c.holds(self.spec.alpha), d.n, d.images, d.method] if d else [""] * 9)
            writer.writerow([c.a[0], ";".join(map(str, c.a[1])), c.b[0], ";".join(map(str, c.b[1])),
                             self.metric_of(*c.a), *numbers, c.paired_by, c.note])
        return out.getvalue()

    def headers(self) -> list[str]:
        heads = [self.spec.labels.get(self.spec.rows, self.spec.rows)]
        heads += [self.column_label(c) for c in self.column_values]
        if self.compare:
            heads += [f"{self.spec.published_name}: {self.column_label(c)}" for c in self.column_values]
        return heads

    def to_markdown(self) -> str:
        heads = self.headers()
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] + ["---:"] * (len(heads) - 1)) + "|"]
        for row in self._display_rows():
            lines.append("| " + " | ".join(f"**{text}**" if best else text for text, best in row) + " |")
        title = f"**{self.spec.title}**\n\n" if self.spec.title else ""
        metric = self.spec.metric or ", ".join(self.spec.metrics)
        note = f"\n\nCells: `{metric}`; '{MISSING_MARK}' = no run, '{FAILED_MARK}' = every run of the cell failed"
        note += f"; bold = best ({self.spec.best}) per column." if self.spec.best else "."
        if self.compare:
            note += f" `{self.spec.published_name}:` columns are the published numbers, for comparison."
        if self.baseline_rows:
            note += " Last rows: " + "; ".join(f"{label} = `{self.spec.baselines[label]}`" for label in
                                              self.baseline_rows) + ", averaged over the column's runs."
        note += " ± = sd over the cell's runs (seeds or folds), n = runs."
        if self.comparisons:
            note += " " + self.comparison_note() + "\n\n" + self.comparisons_markdown().rstrip("\n")
        return title + "\n".join(lines) + note + "\n"

    def to_csv(self) -> str:
        """Machine-readable: full-precision means, 'failed'/'missing' spelled out, n and failures per cell."""
        keys = list(self.spec.columns)
        names = [";".join(f"{k}={v}" for k, v in zip(keys, c, strict=True)) for c in self.column_values]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = [self.spec.rows, *names, *(f"n[{n}]" for n in names)]
        if self.compare:
            header += [f"{self.spec.published_name}[{n}]" for n in names]
        writer.writerow(header)
        rows = [(row, [self.cell(row, c) for c in self.column_values]) for row in self.row_values]
        rows += [(label, [self.baseline_cells.get((label, c), Cell()) for c in self.column_values])
                 for label in self.baseline_rows]
        for row, cells in rows:
            line = [row] + [repr(c.mean) if c.mean is not None else c.state for c in cells]
            line += [len(c.values) for c in cells]
            if self.compare:
                line += ["" if (ref := self._published(row, c)) is None else ref for c in self.column_values]
            writer.writerow(line)
        return out.getvalue()

    def to_latex(self) -> str:
        """A booktabs table whose column header has one level per column key (multicolumn spans)."""
        n_cols = len(self.column_values)
        blocks = [("", self.column_values)]
        if self.compare:
            blocks.append((self.spec.published_name, self.column_values))
        spec = "l" + "r" * n_cols * len(blocks)
        lines = [r"\begin{tabular}{" + spec + "}", r"\toprule"]
        if self.compare:
            heads = [""] + [rf"\multicolumn{{{n_cols}}}{{c}}{{{_tex(name or 'medal')}}}" for name, _ in blocks]
            lines.append(" & ".join(heads) + r" \\")
        for level in range(len(self.spec.columns)):
            row_head = self.spec.labels.get(self.spec.rows, self.spec.rows)
            heads = [_tex(row_head) if level == len(self.spec.columns) - 1 else ""]
            key = self.spec.columns[level]
            for _, columns in blocks:
                heads += [rf"\multicolumn{{{span}}}{{c}}{{{_tex(self._label(key, value))}}}" if span > 1 else
                          _tex(self._label(key, value)) for value, span in _spans(columns, level)]
            lines.append(" & ".join(heads) + r" \\")
        lines.append(r"\midrule")
        for row in self._display_rows():
            lines.append(" & ".join(rf"\textbf{{{_tex(text)}}}" if best else _tex(text) for text, best in row)
                         + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if self.comparisons:
            lines += ["", r"\par\smallskip", _tex(self.comparison_note()), "", r"\begin{tabular}{llrlrrlll}",
                      r"\toprule", " & ".join(_tex(h) for h in self.COMPARISON_HEADS) + r" \\", r"\midrule"]
            lines += [" & ".join(_tex(text) for text in row) + r" \\" for row in self.comparison_rows()]
            lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"


def _spans(columns: Sequence[tuple[Any, ...]], level: int) -> list[tuple[Any, int]]:
    """Run-length groups of the header at `level` (a value spans while the prefix up to `level` repeats)."""
    spans: list[tuple[Any, int]] = []
    previous = None
    for column in columns:
        prefix = column[: level + 1]
        if prefix == previous:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((column[level], 1))
        previous = prefix
    return spans


def _tex(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("±", r"$\pm$"), ("—", "---"), (HOLDS_MARK, r"\textsuperscript{\dag}"), ("−", "$-$"),
                          ("Δ", r"$\Delta$"), ("<", r"$<$"), ("–", "--")):
        text = text.replace(char, escaped)
    return text


def _ordered(seen: Iterable[Any], order: Sequence[Any] | None) -> list[Any]:
    """The declared order first (so expected-but-missing values still get a row/column), then the rest seen."""
    seen = list(dict.fromkeys(seen))
    if not order:
        return sorted(seen, key=str)
    order = list(order)
    return order + [v for v in sorted(seen, key=str) if v not in order]


def build_table(runs: Sequence[RunResult], spec: TableSpec, compare: bool = False) -> Table:
    """Place every run in its cell. Runs lacking a row/column key are ignored (they belong to another table)."""
    if compare and not spec.published:
        raise MedalError("table.compare=paper: this table has no published numbers; use table.preset=figure12")
    axes = (spec.rows, *spec.columns)
    metrics = spec.metrics if METRIC_AXIS in axes else (spec.metric,)
    cells: dict[tuple[Any, tuple[Any, ...]], Cell] = {}
    baseline_cells: dict[tuple[str, tuple[Any, ...]], Cell] = {}
    seen: dict[str, list[Any]] = {key: [] for key in axes}
    for run in runs:
        for metric in metrics:
            values = [metric if key == METRIC_AXIS else run.get(key) for key in axes]
            if any(v is None for v in values):
                continue
            for key, value in zip(axes, values, strict=True):
                seen[key].append(value)
            cell = cells.setdefault((values[0], tuple(values[1:])), Cell())
            value = run.metrics.get(metric) if run.ok else None
            if value is not None:
                cell.values.append(value)
                cell.runs.append(run)
            elif run.status == "failed":
                cell.failed += 1
            for label, baseline in spec.baselines.items():
                reference = run.metrics.get(baseline) if run.ok else None
                if reference is not None:
                    baseline_cells.setdefault((label, tuple(values[1:])), Cell()).values.append(reference)
    orders = {key: spec.orders.get(key) or (metrics if key == METRIC_AXIS else None) for key in axes}
    row_values = _ordered(seen[spec.rows], orders[spec.rows])
    column_values = _product([_ordered(seen[k], orders[k]) for k in spec.columns])
    table = Table(spec=spec, row_values=row_values, column_values=column_values, cells=cells, compare=compare,
                  baseline_cells=baseline_cells)
    if spec.reference_row is not None:
        table.reference = next((r for r in row_values if str(r) == str(spec.reference_row)), None)
        if table.reference is None:
            raise MedalError(f"table.reference={spec.reference_row}: no such row; the rows are "
                             f"{', '.join(map(str, row_values))}")
    table.comparisons = row_comparisons(table)
    return table


def row_comparisons(table: Table) -> list[Comparison]:
    """The paired differences the spec asks for (every row against `reference_row`, or `all_pairs`), within each
    column, Holm-corrected together; none when it asks for neither."""
    spec, ref = table.spec, table.reference
    if ref is None and not spec.all_pairs:
        return []
    pairing = Pairing(pair_by=spec.pair_by, resamples=spec.resamples)
    rows = table.row_values
    pairs = ([(r, ref) for r in rows if r != ref] if ref is not None
             else [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]])
    found = []
    for column in table.column_values:
        for a, b in pairs:
            cell_a, cell_b = table.cell(a, column), table.cell(b, column)
            if cell_a.values and cell_b.values:
                found.append(pairing.compare(cell_a.runs, cell_b.runs, table.metric_of(a, column), (a, column),
                                             (b, column)))
    return with_holm(found)


def _product(levels: list[list[Any]]) -> list[tuple[Any, ...]]:
    result: list[tuple[Any, ...]] = [()]
    for values in levels:
        result = [(*prefix, v) for prefix in result for v in values]
    return result
