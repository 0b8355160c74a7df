"""The README is the front door and docs/ holds the rest: these tests keep both true to the tree.

They read the real files and run the real CLI and metrics registry, so a doc that drifts from the code (an
annotation added, a metric renamed, a module moved, a docs page not linked from the README) fails here rather than
misleading the next reader.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from controller.cli import main as portcullis
from dataplane.metrics import Metrics
from deploy.image import wheels

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# [text](target) links, not images; the target's #anchor is split off below.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_docs_annotation_table_is_what_the_cli_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert portcullis(["render", "--annotations"]) == 0
    printed = capsys.readouterr().out.strip("\n")
    assert printed.startswith("| annotation | values | meaning |")
    assert printed in _text(DOCS / "annotations.md"), (
        "docs/annotations.md is stale: paste the output of `portcullis render --annotations`")


def test_readme_is_a_front_door_with_the_two_commands() -> None:
    readme = _text(README)
    assert len(readme.splitlines()) <= 150, "keep the README short; move detail to docs/"
    blocks = "\n".join(re.findall(r"^```sh\n(.*?)^```", readme, re.MULTILINE | re.DOTALL))
    commands = {line.split("#")[0].strip() for line in blocks.splitlines()}
    assert {"make local", "make test"} <= commands
    # `.ci/run` is what CI calls: the README's `make test` must be exactly that.
    assert re.search(r"^make test$", _text(ROOT / ".ci" / "run"), re.MULTILINE)


def test_readme_docs_index_lists_every_docs_page() -> None:
    index = _text(README).split("## Documentation", 1)[1].split("\n## ", 1)[0]
    linked = set(LINK.findall(index))
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages <= linked, f"not in the README's docs index: {sorted(pages - linked)}"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_text(page)):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL: not ours to check offline
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or (
                anchor and resolved.suffix == ".md" and anchor not in _anchors(_text(resolved))):
            broken.append(target)
    assert broken == []


def test_readme_code_map_names_files_that_exist() -> None:
    architecture = _text(README).split("## Architecture", 1)[1].split("\n## ", 1)[0]
    paths = set(re.findall(r"`((?:controller|dataplane|charts|deploy|scripts|docs)/[\w./-]*)`", architecture))
    assert len(paths) > 20  # the two tables are there
    assert [p for p in sorted(paths) if not (ROOT / p).exists()] == []


def test_operations_lists_every_metric_the_data_plane_exports() -> None:
    exported = set()
    for family in Metrics().registry.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    doc = _text(DOCS / "operations.md")
    documented = set(re.findall(r"^\| `(portcullis_\w+)` \|", doc, re.MULTILINE))
    assert exported - documented == set(), "add the new metric to docs/operations.md, Metrics"
    assert documented - exported == set(), "docs/operations.md names a metric the data plane no longer exports"


def test_license_is_apache_2_and_ships_in_every_wheel() -> None:
    text = _text(ROOT / "LICENSE")
    assert text.lstrip().startswith("Apache License\n")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    project = tomllib.loads(_text(ROOT / "pyproject.toml"))["project"]
    # An SPDX string (PEP 639): the TABLE form is deprecated and setuptools warns on every build.
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    # The image builds the project wheel from a copy of these files only; without LICENSE setuptools warns
    # (and will refuse) and the wheel in the image carries no licence.
    assert set(project["license-files"]) <= set(wheels.PROJECT_FILES)
