"""Paste the latest benchmark results into docs/benchmarks.md.

Each results file (benchmarks/results/*.md) replaces the text between its markers
<!-- BEGIN results/NAME.md --> and <!-- END results/NAME.md --> in docs/benchmarks.md,
so every figure there comes from a benchmark run and none is typed by hand. A results
file that does not exist leaves its section as it is.

Usage: python benchmarks/update_docs.py
"""

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"


def paste(doc_text, name, content):
    """doc_text with the section of results/NAME replaced by content."""
    pattern = re.compile(rf"(<!-- BEGIN results/{re.escape(name)} -->\n).*?(<!-- END results/{re.escape(name)} -->)",
                         re.S)
    if not pattern.search(doc_text):
        raise SystemExit(f"{DOC} has no markers for results/{name}")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), doc_text)


def main():
    text = DOC.read_text()
    for path in sorted((HERE / "results").glob("*.md")):
        content = path.read_text().replace("\n# ", "\n#### ")
        if content.startswith("# "):
            content = "####" + content[1:]
        text = paste(text, path.name, content)
        print(f"pasted {path.relative_to(HERE.parent)} into {DOC.relative_to(HERE.parent)}")
    DOC.write_text(text)


if __name__ == "__main__":
    main()
