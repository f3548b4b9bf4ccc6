"""Paste the latest benchmark results into docs/benchmarks.md and the README.

Each results file (benchmarks/results/*.md) replaces the text between its markers
<!-- BEGIN results/NAME.md --> and <!-- END results/NAME.md --> in docs/benchmarks.md,
and the README's speed table (between <!-- BEGIN speed summary --> and <!-- END speed
summary -->) is built from the rows of results/latest.md and results/coco_scale.md, so
every figure in either file comes from a benchmark run and none is typed by hand. A
results file that does not exist leaves its section as it is.

Usage: python benchmarks/update_docs.py
"""

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUMMARY_CASES = {  # README row -> case in results/latest.md
    "LSTM training step (loss, backward, Adam), float32": "LSTM train step float32",
    "GRU training step, float32": "GRU train step float32",
    "LSTM greedy captions, float32": "LSTM greedy sample float32",
    "GRU greedy captions, float32": "GRU greedy sample float32",
    "Transformer training step, float32": "Transformer train step float32",
}


def paste(doc_text, begin, end, content, where):
    """doc_text with the text between the begin and end marker lines replaced by content."""
    pattern = re.compile(rf"({re.escape(begin)}\n).*?({re.escape(end)})", re.S)
    if not pattern.search(doc_text):
        raise SystemExit(f"{where} has no markers {begin} ... {end}")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), doc_text)


def header(text, key):
    """The value of a '- key: value' line of a results file."""
    m = re.search(rf"^- {key}: (.*)$", text, re.M)
    if not m:
        raise SystemExit(f"a results file has no '- {key}:' line")
    return m.group(1)


def found(pattern, text, what):
    """The first group of pattern in text, or stop naming what is missing."""
    m = re.search(pattern, text)
    if not m:
        raise SystemExit(f"the results have no {what}")
    return m.group(1)


def rows(text):
    """{first cell: cells} of a results file's markdown table."""
    table = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in table}


def summary(latest, coco):
    """The README's speed table, from the texts of results/latest.md and coco_scale.md."""
    fair = rows(latest)
    versions = found(r"(?m)^- (numpy .*)$", latest, "versions line")
    rounds = found(r"(\d+) timed rounds", latest, "number of timed rounds")
    other = found(r"other processes used ([\d.]+%)", latest, "share of other processes")
    lines = [f"{versions}; {header(latest, 'CPU')}. Shapes: {header(latest, 'shapes')}.", "",
             "| | capmodel | PyTorch | ratio |", "|---|---|---|---|"]
    for label, case in SUMMARY_CASES.items():
        if case not in fair:
            raise SystemExit(f"results/latest.md has no row {case!r}: run benchmarks/bench_fair.py without --cases")
        _, ours, theirs, ratio, _ = fair[case]
        lines.append(f"| {label} | {ours.split()[0]} ms | {theirs.split()[0]} ms | {ratio} |")
    lines += ["", f"{header(latest, 'command')}, {header(latest, 'date')}; medians of {rounds} rounds, other "
              f"processes used {other} of the CPU meanwhile."]
    if coco:
        scale = rows(coco)
        epoch = next(cells for name, cells in scale.items() if name.startswith("projected epoch"))
        train = next(cells for name, cells in scale.items() if name.startswith("capmodel train"))
        lines += ["", f"Full COCO (CS231n's sizes): {train[0]} at {train[3].split(';')[0]}; one epoch "
                      f"({epoch[0].split('(')[1].rstrip(')')}) projects to **{epoch[3]}** with "
                      f"{header(coco, 'CPU').split('; ')[1]}: {header(coco, 'command')}, {header(coco, 'date')}."]
    return "\n".join(lines)


def main(root=ROOT):
    doc_path, readme_path, results = root / "docs" / "benchmarks.md", root / "README.md", root / "benchmarks" / "results"
    text = doc_path.read_text()
    for path in sorted(results.glob("*.md")):
        content = path.read_text().replace("\n# ", "\n#### ")
        if content.startswith("# "):
            content = "####" + content[1:]
        text = paste(text, f"<!-- BEGIN results/{path.name} -->", f"<!-- END results/{path.name} -->", content,
                     doc_path)
        print(f"pasted {path.relative_to(root)} into {doc_path.relative_to(root)}")
    doc_path.write_text(text)
    if (results / "latest.md").exists():
        coco = results / "coco_scale.md"
        table = summary((results / "latest.md").read_text(), coco.read_text() if coco.exists() else "")
        readme = paste(readme_path.read_text(), "<!-- BEGIN speed summary -->", "<!-- END speed summary -->", table,
                       readme_path)
        readme_path.write_text(readme)
        print(f"pasted the speed summary into {readme_path.relative_to(root)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
