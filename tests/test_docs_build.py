"""The documentation site builds with warnings as errors, and its generated pages carry the real content. One
build with the documented `sphinx-build -W -b html docs docs/_build/html` (module fixture) is shared by the
checks: the configuration reference generated from rlvr_jax/config.py and configs/*.py, the autodoc API
pages, the equations, the benchmark plots copied into the site. The generator's failure mode (a config that
cannot load stops the build) is checked directly, without a build.
"""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def documented_build() -> str:
    """The build command the README and the docs show (tests/test_doc_commands.py holds them to this test)."""
    from tests.doc_commands import documented_commands

    (command,) = {c.text for c in documented_commands() if c.tokens[0] == "sphinx-build"}
    return command


@pytest.fixture(scope="module")
def site() -> Path:
    """The documented command, run as written from the repository root, twice: a fresh build, then an
    incremental one (the generated pages must not break a second build)."""
    command = documented_build()
    out = REPO / shlex.split(command, comments=True)[-1]
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for build in ("first", "second (incremental)"):
        proc = subprocess.run(
            ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, (
            f"{build} `{command}` failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        )
    return out


def text_of(path: Path) -> str:
    """The page as plain text (tags dropped, entities decoded, whitespace collapsed)."""
    raw = path.read_text()
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", raw, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", raw)))


def table_rows(path: Path) -> dict[str, list[str]]:
    """{first cell text: all cell texts} for every table row of a page."""
    rows = {}
    for row in re.findall(r"<tr\b.*?</tr>", path.read_text(), flags=re.S):
        cells = [
            re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", c))).strip()
            for c in re.findall(r"<t[dh]\b.*?</t[dh]>", row, flags=re.S)
        ]
        if cells and cells[0] not in rows:  # the first table that has the key (the base config's)
            rows[cells[0]] = cells
    return rows


def test_configuration_reference_lists_every_base_field_with_default_and_comment(site: Path) -> None:
    sys.path.insert(0, str(DOCS / "_ext"))
    from rlvr_docs import flatten

    from rlvr_jax.config import base_config

    page = site / "_generated" / "configuration.html"
    rows = table_rows(page)
    for key in flatten(base_config()):
        assert key in rows, f"{key} missing from the configuration reference"
    # default and meaning columns: the source comment where the line has one, the docs note otherwise
    assert rows["rl.clip_low"][1] == "0.2"
    assert "1 - clip_low" in rows["rl.clip_low"][3]
    assert rows["rl.clip_high"][1] == "0.28"
    assert rows["rl.clip_high"][3] == "DAPO clip-higher"
    assert rows["model.remat"][1] == '"none"' and rows["model.remat"][3] == "none | full | dots"
    assert rows["rl.advantage"][4] == "grpo, dr_grpo, rloo, batch_norm"  # allowed values from _CHOICES
    assert rows["data.path"][1] == "None" and rows["data.path"][2] == "str or None"
    assert "fewest that fit" in rows["optim.micro_batches"][3]  # the comment block above the field


def test_configuration_reference_has_each_config_file_its_changes_and_presets(site: Path) -> None:
    text = text_of(site / "_generated" / "configuration.html")
    for path in sorted((REPO / "configs").glob("*.py")):
        assert f"configs/{path.name}" in text
    assert "Preset small" in text and "Preset tiny" in text
    for preset in ("easy", "medium", "hard"):
        assert re.search(rf"Preset {preset} \( ?--config=configs/arithmetic\.py:{preset} ?\)", text), preset
    # quickstart vs base: the learning rate it sets, and the task option the base does not have
    section = text[text.index("configs/quickstart.py") :]
    assert re.search(r"optim\.learning_rate 1e-06 5e-05", section)
    assert re.search(r"data\.options\.validation_fraction added 0\.2", section)


def test_api_reference_documents_the_rl_core(site: Path) -> None:
    page = (site / "_generated" / "api" / "rlvr_jax.rl.html").read_text()
    for name in (
        "rlvr_jax.rl.advantages.group_advantages",
        "rlvr_jax.rl.advantages.get_advantage_fn",
        "rlvr_jax.rl.losses.policy_loss",
        "rlvr_jax.rl.losses.aggregate",
        "rlvr_jax.rl.losses.kl_estimate",
        "rlvr_jax.rl.losses.LossConfig",
        "rlvr_jax.rl.dynamic_sampling.fill_batch",
        "rlvr_jax.rl.update.make_train_step",
    ):
        assert f'id="{name}"' in page, name
    text = text_of(site / "_generated" / "api" / "rlvr_jax.rl.html")
    assert "k3 = (r - 1) - log r" in text  # a plain-text docstring table, kept as written
    for package in ("rlvr_jax", "rlvr_jax.sharding", "rlvr_jax.trainer", "serving.app"):
        assert package in text_of(site / "py-modindex.html")


def test_concepts_page_renders_the_equations(site: Path) -> None:
    page = (site / "concepts.html").read_text()
    maths = re.findall(r'class="math[^"]*"', page)
    assert len(maths) >= 10
    for tex in (r"\operatorname{clip}", r"\frac{G}{G-1}", r"k_3 = \left(r - 1\right) - \log r"):
        assert html.escape(tex, quote=False) in page or tex in page, tex


def test_benchmarks_page_embeds_the_committed_plots(site: Path) -> None:
    page = (site / "benchmarks.html").read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert "../_images/learning_runs.png" not in images  # the page is at the root
    assert "_images/learning_runs.png" in images
    copied = site / "_images" / "learning_runs.png"
    assert copied.read_bytes() == (REPO / "benchmarks" / "results" / "learning_runs.png").read_bytes()
    assert len(images) >= 5
    text = text_of(site / "benchmarks.html")
    # The learning table is the generated one (benchmarks/results/learning_runs.md), row for row.
    table = (REPO / "benchmarks" / "results" / "learning_runs.md").read_text().splitlines()[2:]
    for row in table:
        assert row.split(" | ")[4] in text  # each run's after (or "-") ...
    assert "+7.4 (+4.6, +10.0)" in text and "27.1% / 34.6% (2.6e-07)" in text
    assert "118,759" in text and "101,317" in text


def test_every_page_is_in_the_site(site: Path) -> None:
    for name in ("index", "getting-started", "concepts", "tutorials", "deployment", "monitoring",
                 "best-practices", "benchmarks", "notebooks", "api"):  # fmt: skip
        assert (site / f"{name}.html").is_file(), name
    nav = text_of(site / "index.html")
    assert "Configuration reference" in nav and "Deployment guide" in nav


def test_a_config_that_cannot_load_stops_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(DOCS / "_ext"))
    import rlvr_docs
    from sphinx.errors import ExtensionError

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "broken.py").write_text(
        "def get_config(arg=None):\n    raise RuntimeError('boom')\n"
    )
    monkeypatch.setattr(rlvr_docs, "REPO", tmp_path)
    with pytest.raises(ExtensionError, match=r"configs/broken\.py.*boom"):
        rlvr_docs.configs_page()


def test_a_failed_generation_leaves_no_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(DOCS / "_ext"))
    import rlvr_docs
    from sphinx.errors import ExtensionError

    src = tmp_path / "docs"
    stale = src / "_generated" / "configuration.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("# Configuration reference\n\nfrom an earlier build\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "typo.py").write_text("def get_config(arg=None):\n    return base_config()\n")
    monkeypatch.setattr(rlvr_docs, "REPO", tmp_path)
    with pytest.raises(ExtensionError, match=r"configs/typo\.py.*base_config"):
        rlvr_docs.generate(SimpleNamespace(srcdir=str(src)))
    assert not stale.exists()
