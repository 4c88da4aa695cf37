"""Links from a page to repository files outside ``docs/`` point at the repository (an MkDocs hook).

The pages are read in two places: on GitHub, where ``[x](../configs/default.yaml)`` opens the
file, and on the built site, which holds only ``docs/``. This hook rewrites such relative links,
when their target exists in the repository, to ``<repo_url>/blob/<branch>/<path>`` (a folder:
``tree``), so they work on the site too. A link to a file that does not exist is left alone, and
the strict build reports it as broken.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BRANCH = "main"

# [text](target) and [text](target "title"), not images' data URIs or absolute URLs
_LINK = re.compile(r"(\]\()(?P<target>\.\.?/[^)\s#]+)(?P<anchor>#[^)\s]*)?(?P<rest>[^)]*\))")


def repo_url_for(
    target: str, page_dir: Path, docs_dir: Path, repo_root: Path, repo_url: str
) -> str | None:
    """The repository URL of a relative link ``target`` from a page in ``page_dir``, or None when
    the target lies inside ``docs/`` or does not exist."""
    resolved = (page_dir / target).resolve()
    if (
        resolved.is_relative_to(docs_dir)
        or not resolved.is_relative_to(repo_root)
        or not resolved.exists()
    ):
        return None
    kind = "tree" if resolved.is_dir() else "blob"
    return f"{repo_url.rstrip('/')}/{kind}/{BRANCH}/{resolved.relative_to(repo_root).as_posix()}"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: rewrite relative links that leave ``docs/`` to repository URLs."""
    repo_url = config.get("repo_url")
    if not repo_url or page.file.abs_src_path is None:
        return markdown
    docs_dir = Path(config["docs_dir"]).resolve()
    repo_root = Path(config["config_file_path"]).resolve().parent
    page_dir = Path(page.file.abs_src_path).resolve().parent

    def replace(match: re.Match[str]) -> str:
        url = repo_url_for(match["target"], page_dir, docs_dir, repo_root, repo_url)
        if url is None:
            return match.group(0)
        return f"{match[1]}{url}{match['anchor'] or ''}{match['rest']}"

    return _LINK.sub(replace, markdown)
