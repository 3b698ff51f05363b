"""The README and the docs pages: examples run as written, generated lists match the code, links resolve.

The docs site itself is checked by ``mkdocs build --strict`` (CI): broken links between pages, anchors and API
references fail there. These tests cover what MkDocs does not see: the README, the Python examples, and the
lists written out from the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unicornn.training.settings import TRAIN_KEY_HELP

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_LIMIT = 12_000  # bytes: the README is a front page; everything else lives in docs/

PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)
EXAMPLES = [
    (path, i, code)
    for path in [README, *sorted(DOCS.glob("*.md"))]
    for i, code in enumerate(PYTHON_BLOCK.findall(path.read_text()))
]


def _block(text: str, name: str) -> str:
    """The text between ``<!-- name ... -->`` and ``<!-- /name -->`` (exactly one such block)."""
    found = re.findall(rf"<!-- {name}\b[^>]*-->\n(.*?)<!-- /{name} -->", text, flags=re.S)
    assert len(found) == 1, f"expected one <!-- {name} --> ... <!-- /{name} --> block, found {len(found)}"
    return found[0]


@pytest.mark.parametrize(
    "path, index, code", EXAMPLES, ids=[f"{p.relative_to(REPO)}-{i}" for p, i, _ in EXAMPLES]
)
def test_python_example_runs(path, index, code):
    exec(compile(code, f"{path.name} python block {index}", "exec"), {})


def test_readme_has_an_example():
    assert PYTHON_BLOCK.search(README.read_text()), "the README must keep one runnable Python example"


def test_readme_size():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move detail into docs/"


def test_readme_set_keys_match_the_code():
    listed = re.findall(r"`([a-z_0-9]+)`", _block(README.read_text(), "set-keys"))
    expected = ", ".join(f"`{k}`" for k in TRAIN_KEY_HELP)
    assert listed == list(TRAIN_KEY_HELP), f"README's --set list must be (in this order):\n{expected}"


def test_settings_table_matches_the_code():
    rows = ["| setting | meaning |", "| --- | --- |"]
    rows += [f"| `{k}` | " + v.replace("|", "\\|") + " |" for k, v in TRAIN_KEY_HELP.items()]
    expected = "\n".join(rows) + "\n"
    found = _block((DOCS / "training.md").read_text(), "settings-table")
    assert found == expected, f"docs/training.md's settings table must read:\n{expected}"


def _slug(heading: str) -> str:
    """The anchor GitHub and MkDocs give a heading (for the simple headings the README links to)."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s+", "-", text)


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README should link to the docs pages"
    for link in local:
        target, _, anchor = link.partition("#")
        path = REPO / target
        assert path.is_file(), f"README links to {link}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"README links to {link}: no such heading"


def test_readme_links_every_docs_page():
    text = README.read_text()
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"(docs/{page.name})" in text, f"the README does not link to docs/{page.name}"


def test_ci_installs_and_tests_as_the_readme_says():
    ci = (REPO / ".ci" / "run").read_text()
    readme = README.read_text()
    installs = re.findall(r"pip install (?!--)[^&\n]+", ci)
    assert installs, ".ci/run installs nothing?"
    for command in installs:
        assert command.strip() in readme, f".ci/run runs '{command.strip()}', which the README does not say"
    for command in ("python -m pytest", "mkdocs build --strict"):
        assert command in ci and command in readme, f"'{command}' must be in both .ci/run and the README"


def test_data_page_checksums_are_the_codes():
    code = "\n".join(p.read_text() for p in (REPO / "src" / "unicornn" / "tasks").glob("*.py"))
    digests = re.findall(r"`([0-9a-f]{32}|[0-9a-f]{64})`", (DOCS / "data.md").read_text())
    assert len(digests) >= 10, "docs/data.md lists the files' checksums"
    for digest in digests:
        assert digest in code, f"docs/data.md lists checksum {digest}, which the code does not check"
