"""Write every table of measured figures in README.md and docs/*.md from benchmarks/results/*.json.

``make docs`` runs this. A table lives between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->``; everything between the markers is replaced by what :data:`TABLES`
makes of the committed JSON, so a figure in the docs is always one a committed benchmark wrote.
``--check`` writes nothing and exits 1 when a file would change (``tests/test_docs.py`` does the
same through :func:`render`). Standard library only, except the model table, which asks
``mobilenets models --json``'s own code for parameters and MAdds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from doc_tables import TABLE_MAKERS, Results, machine_name, markdown  # noqa: F401  (machine_name: for tests)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/training.md", "docs/deployment.md", "docs/performance.md", "docs/serving.md")
MARKER = re.compile(r"(<!-- results:([\w-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)

# --- the model table ----------------------------------------------------------------------------

def model_rows() -> list[dict]:
    """Parameters and MAdds at 224 exactly as ``mobilenets models --json`` prints them."""
    from mobilenets.cli.main import main as cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli(["models", "--json"])
    return json.loads(out.getvalue())


def models_table(_: Results) -> str:
    """Params and MAdds from ``mobilenets models``; top-1 from the weights registry's default
    tag of each model (``create_model(name, pretrained=True)``)."""
    from mobilenets.io.weights import default_tags

    defaults = default_tags()
    rows = [[f"`{r['model']}`", f"{r['params']:,}", f"{r['madds'] / 1e6:.2f} M",
             f"{defaults[r['model']].top1:.1f} %", f"`{defaults[r['model']].tag}`"]
            for r in model_rows()]
    return (markdown(["model", "params", "MAdds @224", "ImageNet top-1", "default weights"], rows[:], 1)
            .replace("|---:|\n", "|---|\n", 1)
            + "\n\nParams and MAdds: `mobilenets models` (1000 classes, 224×224). Top-1: the published "
              "figure of the default weights (`pretrained=True`: torchvision's DEFAULT where torchvision "
              "has the model, else the best published; `mobilenets weights` lists all), not measured here.")


TABLES: dict[str, Callable[[Results], str]] = {"models": models_table, **TABLE_MAKERS}


def render(text: str, results: Results) -> str:
    """``text`` with every marked table replaced by what the generator makes of ``results``."""
    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in TABLES:
            raise SystemExit(f"error: unknown table <!-- results:{name} --> (known: {', '.join(TABLES)})")
        return f"{match.group(1)}{TABLES[name](results).rstrip()}\n{match.group(4)}"
    return MARKER.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    args = p.parse_args(argv)
    results, stale = Results(), []
    for name in DOCS:
        path = ROOT / name
        text = path.read_text()
        new = render(text, results)
        if new != text:
            stale.append(name)
            if not args.check:
                path.write_text(new)
    verb = "out of date" if args.check else "rewritten"
    print(f"{verb}: {', '.join(stale)}" if stale else "docs: every table is up to date")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
