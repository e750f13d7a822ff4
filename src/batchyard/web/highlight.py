"""main.py shown read-only, highlighted on the server (Pygments): no script needed."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from markupsafe import Markup

if TYPE_CHECKING:
    from pygments.formatters import HtmlFormatter


@functools.cache
def _formatter() -> HtmlFormatter[str]:
    # Made at the first page that shows code: an idle server does not load Pygments.
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(cssclass="code", linenos="table", wrapcode=True)


def highlight(source: str) -> Markup:
    from pygments import highlight as pygments_highlight
    from pygments.lexers import PythonLexer

    # Pygments escapes the source text itself; its output is safe markup.
    return Markup(pygments_highlight(source, PythonLexer(), _formatter()))


def stylesheet() -> str:
    return str(_formatter().get_style_defs(".code"))  # type: ignore[no-untyped-call]
