"""Where the notebooks open on Colab and install from: one constant for all of them.

Each notebook starts with an "Open in Colab" badge pointing at its own copy in GITHUB_REPO, asks Colab
for a TPU runtime in its metadata, and clones REPO_URL in its install cell. Running this file writes
those three things into every notebook here (a fork changes GITHUB_REPO and runs it once):

    python notebooks/colab.py          # stamp the notebooks
    python notebooks/colab.py --check  # exit 1 and name the notebooks that differ (tests run this check)
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

GITHUB_REPO = "rlvr-jax/rlvr-jax"  # owner/name on GitHub
BRANCH = "main"
REPO_URL = f"https://github.com/{GITHUB_REPO}"
NOTEBOOKS = Path(__file__).resolve().parent

# Colab's own keys: "accelerator" picks the runtime type, colab.gpuType the chip (V5E1: one TPU v5e, the
# TPU runtime Colab offers now; the v2-8 TPU runtime is gone).
COLAB_METADATA = {"accelerator": "TPU", "colab": {"gpuType": "V5E1", "provenance": []}}
BADGE_CELL_ID = "colab-badge"
_REPO_URL_LINE = re.compile(r"^REPO_URL = .*$", re.MULTILINE)


def colab_url(name: str) -> str:
    """The URL that opens notebooks/<name>.ipynb of GITHUB_REPO on Colab."""
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{BRANCH}/notebooks/{name}.ipynb"


def badge(name: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name)})"


def repo_url_line() -> str:
    return f'REPO_URL = "{REPO_URL}"  # Colab clones it from here (a fork\'s URL works too)'


def stamp(nb: Any, name: str) -> Any:
    """A copy of the notebook (nbformat) with the badge as its first cell, the TPU runtime in its metadata
    (other keys kept) and REPO_URL set in every code cell that assigns it."""
    import nbformat

    nb = copy.deepcopy(nb)
    first = nb.cells[0] if nb.cells else None
    if first is None or first.get("id") != BADGE_CELL_ID:
        first = nbformat.v4.new_markdown_cell(id=BADGE_CELL_ID)
        nb.cells.insert(0, first)
    first.source = badge(name)
    nb.metadata["accelerator"] = COLAB_METADATA["accelerator"]
    nb.metadata["colab"] = {**nb.metadata.get("colab", {}), **COLAB_METADATA["colab"]}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = _REPO_URL_LINE.sub(lambda _: repo_url_line(), cell.source)
    return nb


def notebook_names() -> list[str]:
    return sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only say which notebooks are not stamped")
    args = parser.parse_args(argv)
    differ = []
    for name in notebook_names():
        path = NOTEBOOKS / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        stamped = stamp(nb, name)
        if stamped == nb:
            continue
        differ.append(name)
        if not args.check:
            nbformat.write(stamped, path)
    if args.check and differ:
        print(f"not stamped: {', '.join(differ)}; run python notebooks/colab.py", file=sys.stderr)
        return 1
    print(("stamped: " if differ else "all stamped: ") + ", ".join(differ or notebook_names()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
