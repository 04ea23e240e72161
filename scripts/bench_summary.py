"""Gather every `outputs/bench/<name>.json` into `outputs/bench/summary.md` (run by `make bench`)."""

from __future__ import annotations

import json

from medal.bench import BENCH_DIR, markdown_table


def main() -> None:
    parts = sorted(p for p in BENCH_DIR.glob("*.json"))
    if not parts:
        raise SystemExit(f"no benchmark results in {BENCH_DIR}; run `make bench`")
    machine = json.loads(parts[0].read_text())["machine"]
    lines = [
        "# medal benchmarks",
        "",
        f"Measured on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}. Every figure is a "
        "ratio against a baseline measured in the same run.",
        "",
    ]
    for path in parts:
        payload = json.loads(path.read_text())
        lines.append(markdown_table(payload["name"], payload))
    out = BENCH_DIR / "summary.md"
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
