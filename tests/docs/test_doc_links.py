"""The documentation's links lead somewhere: every relative link in the repository's Markdown names a
file inside the repository that exists (and, with `#anchor`, a heading of that file as GitHub slugs
it), and every `docs/….md` or `deploy/….md` that source code names exists.

Links inside code blocks and code spans are not links; URLs with a scheme are not checked (no
network). A link that leaves the repository is broken even if the file exists on this machine: the
documentation must be self-contained.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE_LINK = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")
_DOC_MENTION = re.compile(r"(?<![\w/.-])((?:docs|deploy)/[\w./-]*\w\.md)\b")
_SKIPPED_DIRS = {"node_modules", "__pycache__"}


def _tracked_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under `root` ending in `suffixes`, outside hidden directories (.venv, .git, .onefold …)."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS)
        found += [Path(directory) / name for name in sorted(files) if name.endswith(suffixes)]
    return found


def _prose_lines(text: str, *, code_spans: bool = False) -> list[tuple[int, str]]:
    """(line number, line) for every line outside fenced code blocks; code spans are removed unless
    `code_spans` (a link inside one is text, but a heading's anchor includes it)."""
    lines = []
    fence = ""
    for number, line in enumerate(text.splitlines(), start=1):
        opening = _FENCE.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
            continue
        if opening:
            fence = opening.group(1)
            continue
        lines.append((number, line if code_spans else _CODE_SPAN.sub("", line)))
    return lines


def github_slugs(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (duplicates get -1, -2, …)."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for _number, line in _prose_lines(text, code_spans=True):
        heading = _HEADING.match(line)
        if heading is None:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a Markdown file that is not a URL with a scheme."""
    links = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        targets = [match.group(1) for match in _INLINE_LINK.finditer(line)]
        reference = _REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        for target in targets:
            target = target.strip("<>")
            if target and not _SCHEME.match(target):
                links.append((number, target))
    return links


def broken_links(root: Path, files: list[Path]) -> list[str]:
    """One sentence per link in `files` that leads nowhere inside `root`."""
    root = root.resolve()
    problems = []
    for source in files:
        where = source.relative_to(root)
        for number, target in relative_links(source):
            path_part, _, anchor = target.partition("#")
            resolved = (source.parent / unquote(path_part)).resolve() if path_part else source.resolve()
            if not resolved.is_relative_to(root):
                problems.append(f"{where}:{number}: '{target}' leads outside the repository")
            elif not resolved.exists():
                problems.append(f"{where}:{number}: '{target}' names a file that does not exist")
            elif (
                anchor
                and resolved.suffix == ".md"
                and unquote(anchor).lower() not in github_slugs(resolved.read_text(encoding="utf-8"))
            ):
                problems.append(f"{where}:{number}: '{target}' names a heading that does not exist")
    return problems


def test_every_relative_link_in_the_markdown_leads_to_an_existing_file() -> None:
    files = _tracked_files(ROOT, (".md",))
    assert ROOT / "README.md" in files and ROOT / "docs" / "architecture.md" in files
    # The extractor must see the README's links, or an empty result would prove nothing.
    assert any(target == "docs/architecture.md" for _number, target in relative_links(ROOT / "README.md"))
    assert broken_links(ROOT, files) == []


def test_source_code_names_only_documents_that_exist() -> None:
    sources = [
        path
        for path in _tracked_files(
            ROOT, (".py", ".proto", ".yaml", ".yml", ".toml", "Makefile", "Dockerfile")
        )
        if path != Path(__file__).resolve()
    ]
    mentioned = {
        (path.relative_to(ROOT), name)
        for path in sources
        for name in _DOC_MENTION.findall(path.read_text(encoding="utf-8", errors="replace"))
    }
    assert any(name == "docs/architecture.md" for _path, name in mentioned)
    missing = sorted(f"{path}: {name}" for path, name in mentioned if not (ROOT / name).exists())
    assert missing == []


def test_the_check_reports_each_kind_of_broken_link(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# The guide\n\n## Step `one`\n\n## Step one\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[guide](docs/guide.md) [step](docs/guide.md#step-one) [again](docs/guide.md#step-one-1)\n"
        "[gone](docs/missing.md) [no heading](docs/guide.md#step-two) [up](../outside.md)\n"
        "[web](https://example.org/x.md) `[code](docs/nothing.md)` [self](#intro)\n"
        "```\n[fenced](docs/nothing.md)\n```\n"
        "[ref]: docs/absent.md\n"
    )
    assert broken_links(tmp_path, [page]) == [
        "README.md:2: 'docs/missing.md' names a file that does not exist",
        "README.md:2: 'docs/guide.md#step-two' names a heading that does not exist",
        "README.md:2: '../outside.md' leads outside the repository",
        "README.md:3: '#intro' names a heading that does not exist",
        "README.md:7: 'docs/absent.md' names a file that does not exist",
    ]


def test_every_test_a_document_cites_exists() -> None:
    # docs/consent.md proves each article with a named test; a renamed test must not leave it citing air.
    cited = {
        (path.relative_to(ROOT), name)
        for path in (ROOT / "docs").glob("*.md")
        for name in re.findall(r"`(test_\w+)`", path.read_text(encoding="utf-8"))
    }
    assert any(path.name == "consent.md" for path, _name in cited)
    defined = {
        match
        for path in _tracked_files(ROOT, (".py",))
        if path.name.startswith("test_")
        for match in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(encoding="utf-8"), re.M)
    }
    assert sorted(f"{path}: {name}" for path, name in cited if name not in defined) == []
