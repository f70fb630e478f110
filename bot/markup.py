"""Neutral reply markup and its renderers.

Reply text is a small CommonMark subset: `**bold**`, `_italic_`, `` `code` ``, `[text](url)`,
and lines starting with `- ` or `1. `. Plugins build it with the helpers here (never by writing
the markers themselves, so user text cannot break the formatting); each adapter renders it:
Discord markdown, Slack mrkdwn, plain terminal text.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

_SPECIAL = re.compile(r"([\\`*_\[\]])")
_TOKEN = re.compile(
    r"\\(?P<esc>[\\`*_\[\]()])"
    r"|`(?P<code>[^`]+)`"
    r"|\*\*(?P<bold>(?:\\.|[^*\\])+)\*\*"
    r"|(?<![\w\\])_(?P<italic>(?:\\.|[^_\\])+)_(?!\w)"
    r"|\[(?P<label>(?:\\.|[^\]\\])+)\]\((?P<url>[^)\s]+)\)"
)


def escape(text: str) -> str:
    """User text as literal characters: no marker inside it is read as formatting."""
    return _SPECIAL.sub(r"\\\1", str(text))


def bold(text: str) -> str:
    return f"**{escape(text)}**"


def italic(text: str) -> str:
    return f"_{escape(text)}_"


def code(text: str) -> str:
    inner = str(text).replace("`", "'")
    return f"`{inner}`"


def link(text: str, url: str) -> str:
    return f"[{escape(text)}]({url.replace(')', '%29').replace(' ', '%20')})"


def bullets(items: Iterable[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def numbered(items: Iterable[str]) -> str:
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def _render(text: str, *, plain: Callable[[str], str], esc: Callable[[str], str], code_: Callable[[str], str],
            bold_: Callable[[str], str], italic_: Callable[[str], str], link_: Callable[[str, str], str]) -> str:
    def inner(part: str) -> str:
        out, pos = [], 0
        for m in _TOKEN.finditer(part):
            out.append(plain(part[pos:m.start()]))
            pos = m.end()
            if m.group("esc") is not None:
                out.append(esc(m.group("esc")))
            elif m.group("code") is not None:
                out.append(code_(m.group("code")))
            elif m.group("bold") is not None:
                out.append(bold_(inner(m.group("bold"))))
            elif m.group("italic") is not None:
                out.append(italic_(inner(m.group("italic"))))
            else:
                out.append(link_(inner(m.group("label")), m.group("url")))
        out.append(plain(part[pos:]))
        return "".join(out)

    return inner(text)


def render_plain(text: str) -> str:
    """Terminal text: markers gone, links as `text (url)`."""
    return _render(text, plain=str, esc=str, code_=str, bold_=str, italic_=str,
                   link_=lambda label, url: label if label == url else f"{label} ({url})")


def render_discord(text: str) -> str:
    """Discord markdown: the same markers; escapes stay escaped."""
    return _render(text, plain=str, esc=lambda c: "\\" + c, code_=lambda c: f"`{c}`",
                   bold_=lambda t: f"**{t}**", italic_=lambda t: f"_{t}_",
                   link_=lambda label, url: f"[{label}]({url})")


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(text: str) -> str:
    """Slack mrkdwn: `*bold*`, `_italic_`, `<url|text>`; &, < and > escaped; `- ` lists as bullets."""
    lines = [("• " + line[2:]) if line.startswith("- ") else line for line in text.split("\n")]
    return _render("\n".join(lines), plain=_slack_escape, esc=_slack_escape,
                   code_=lambda c: f"`{_slack_escape(c)}`", bold_=lambda t: f"*{t}*", italic_=lambda t: f"_{t}_",
                   link_=lambda label, url: f"<{_slack_escape(url)}|{label}>")
