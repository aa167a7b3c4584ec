"""mkdocs hooks (``mkdocs.yml``: ``hooks``): the docstrings are written with Sphinx roles
(``:class:`~market_data_core.contracts.Bar```) and reST's ``::`` before a code block, which
mkdocstrings renders as they are. After each page is rendered, a role before inline code is
dropped (the code stays), a ``~`` keeps the last dotted part as Sphinx shows it, and a
paragraph's closing ``::`` becomes ``:``."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):(<code>)")
_TILDE = re.compile(r"<code>~(?:[\w]+\.)*([\w]+)")
_LITERAL = re.compile(r"::</p>")


def on_page_content(html: str, **_: Any) -> str:
    html = _ROLE.sub(r"\1", html)
    html = _TILDE.sub(r"<code>\1", html)
    return _LITERAL.sub(":</p>", html)
