"""main.py shown read-only, highlighted on the server (Pygments): no script needed."""

from __future__ import annotations

from markupsafe import Markup
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

_FORMATTER = HtmlFormatter(cssclass="code", linenos="table", wrapcode=True)


def highlight(source: str) -> Markup:
    # Pygments escapes the source text itself; its output is safe markup.
    return Markup(pygments_highlight(source, PythonLexer(), _FORMATTER))


def stylesheet() -> str:
    return str(_FORMATTER.get_style_defs(".code"))  # type: ignore[no-untyped-call]
