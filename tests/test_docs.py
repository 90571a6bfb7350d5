"""The documentation: the site builds with no warning (a broken link fails it), and the README stays short.

`make docs` runs the same build (`mkdocs build --strict`) into site/; here it goes to a temporary folder.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")

pytest.importorskip("mkdocs")
pytest.importorskip("material")


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict`, with the mkdocs of this interpreter, from the folder of `config`."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=config.parent, capture_output=True, text=True, timeout=300)


def copy_project(dest: Path) -> Path:
    """What the docs build reads (config, pages, hook, README for the included sections, stored results)."""
    shutil.copy(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    shutil.copy(README, dest / "README.md")
    shutil.copytree(ROOT / "docs", dest / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "benchmarks" / "results", dest / "benchmarks" / "results")
    return dest / "mkdocs.yml"


def test_site_builds_strict_with_no_warning(tmp_path):
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert not re.search(r"^WARNING", result.stderr, re.MULTILINE), result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    # benchmark tables come from the stored JSON: the hook replaced every marker with a table
    page = (tmp_path / "site" / "results" / "inference" / "index.html").read_text()
    assert "bench-inference-2026-11-23-final.json" in page and "speedup_over_best_single_bert512_1gbps" in page
    assert "galaxy:4:allreduce" in page and "<!-- bench:" not in page
    assert "measured_ratio_hybrid_over_dp" in (tmp_path / "site" / "results" / "runtime" / "index.html").read_text()
    # the sections included from the README are there
    assert "make test-latest" in (tmp_path / "site" / "setup" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    config = copy_project(tmp_path)
    page = tmp_path / "docs" / "architecture.md"
    page.write_text(page.read_text() + "\nSee [a page that is not there](no-such-page.md).\n")
    result = build(config, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def test_a_missing_benchmark_result_fails_the_build(tmp_path):
    config = copy_project(tmp_path)
    page = tmp_path / "docs" / "results" / "index.md"
    page.write_text(page.read_text() + "\n<!-- bench: metrics benchmarks/results/nothing/here.json -->\n")
    result = build(config, tmp_path / "site")
    assert result.returncode != 0
    assert "benchmarks/results/nothing/here.json" in result.stderr


def test_readme_is_short_and_shows_the_setup_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 260
    assert "make demo" in text and "make test" in text
    for command in ("make install", "make test-latest", "make lock", "make docs"):
        assert command in text, command
    assert "### Dependencies: the lock and the newest releases" in text


def test_every_relative_link_in_the_readme_exists():
    links = [target for target in LINK.findall(README.read_text())
             if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]
    assert links, "the README links into docs/"
    missing = [t for t in links if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_docs_pages_named_in_the_source_exist():
    """A docstring that points a reader at a page (`docs/areas/serving.md`) must name one that exists."""
    named = {(path.relative_to(ROOT), page)
             for path in (ROOT / "src").rglob("*.py")
             for page in re.findall(r"\bdocs/[\w./-]+\.md\b", path.read_text())}
    missing = [f"{path}: {page}" for path, page in sorted(named) if not (ROOT / page).is_file()]
    assert not missing, missing
