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
    "LSTM greedy captions (100 images, 30 words)": "LSTM greedy sample float32",
    "GRU greedy captions": "GRU greedy sample float32",
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
    return m.group(1) if m else "?"


def rows(text):
    """{first cell: cells} of a results file's markdown table."""
    table = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in table}


def summary(latest, coco):
    """The README's speed table, from the texts of results/latest.md and coco_scale.md."""
    fair = rows(latest)
    lines = ["| | capmodel | PyTorch | ratio |", "|---|---|---|---|"]
    for label, case in SUMMARY_CASES.items():
        if case in fair:
            _, ours, theirs, ratio, _ = fair[case]
            lines.append(f"| {label} | {ours.split()[0]} ms | {theirs.split()[0]} ms | {ratio} |")
    other = re.search(r"other processes used ([\d.]+%)", latest)
    rounds = re.search(r"(\d+) timed rounds", latest)
    lines += ["", f"{header(latest, 'command')}, {header(latest, 'date')}, {header(latest, 'CPU')}; "
              f"medians of {rounds.group(1) if rounds else '?'} rounds, other processes used "
              f"{other.group(1) if other else '?'} of the CPU meanwhile."]
    if coco:
        epoch = rows(coco).get("projected epoch (4001 iterations)")
        train = next((cells for name, cells in rows(coco).items() if name.startswith("capmodel train")), None)
        if epoch and train:
            lines += ["", f"One epoch of full COCO (400,135 captions, LSTM H=512, batch 100) projects to "
                          f"**{epoch[3]}** on 2 cores ({train[3].split(';')[0]}): "
                          f"{header(coco, 'command')}, {header(coco, 'date')}."]
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
