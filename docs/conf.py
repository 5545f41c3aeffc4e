"""Sphinx configuration of the rlvr-jax documentation (`sphinx-build -W -b html docs OUT`)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # rlvr_jax and serving, also from a checkout that is not installed

project = "rlvr-jax"
author = "the rlvr-jax authors"
copyright = "2026, the rlvr-jax authors"
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "rlvr_docs",  # docs/_ext: the generated configuration and API pages, plain-text docstrings
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", ".gitignore"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# The docstrings are plain text (see docs/_ext/rlvr_docs.py); `x` in them is code.
default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autosummary_generate = False

html_theme = "furo"
html_title = "rlvr-jax"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
