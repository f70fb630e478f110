"""Neutral reply markup and its renderers.

Reply text is a small CommonMark subset: `**bold**`, `_italic_`, `` `code` ``, `[text](url)`,
and lines starting with `- ` or `1. `. Plugins build it with the helpers here (never by writing
the markers themselves, so user text cannot break the formatting); each adapter renders it:
Discord markdown, Slack mrkdwn, plain terminal text.

One escaping rule for every platform: everything outside the markers above is literal text,
and each renderer keeps it literal there. No plain run of Reply text, whoever wrote it (a
plugin, a label, a prompt, a query), ever becomes a platform construct: Discord gets its
mentions (`@everyone`, `@here`, `<@id>`, `<@&role>`) broken with a zero-width space and its
spoiler and strikethrough markers (`||`, `~~`) escaped; Slack gets `&`, `<` and `>` escaped, so
`<!channel>` or `<@U1>` show as typed. Every renderer strips control characters (tabs and line
ends stay) and the bidi controls that reorder what a reader sees (U+202E and friends). So plugins
never mark "user text" beyond `escape()`: all text is user text. Adapters that mean to ping
someone add the mention outside the rendered text (and say so to the platform).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

# C0/C1 controls but tab and line feed; the Unicode bidi controls (LRM/RLM/ALM, embeddings,
# overrides, isolates). Echoed user text must not reorder or hide what a reader sees.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_DISCORD_MENTION = re.compile(r"@(?=everyone|here|[!&]?\d)")  # what Discord reads as a ping after "@"
_DISCORD_MARKERS = re.compile(r"([|~])")  # spoilers and strikethrough: not neutral markup, so literal
_SPECIAL = re.compile(r"([\\`*_\[\]])")
_TOKEN = re.compile(
    r"\\(?P<esc>[\\`*_\[\]()])"
    r"|`(?P<code>[^`]+)`"
    r"|\*\*(?P<bold>(?:\\.|[^*\\])+)\*\*"
    r"|(?<![\w\\])_(?P<italic>(?:\\.|[^_\\])+)_(?!\w)"
    r"|\[(?P<label>(?:\\.|[^\]\\])+)\]\((?P<url>[^)\s]+)\)"
)


def clean(text: str) -> str:
    """`text` without control characters (tab and line feed kept) or bidi controls."""
    return _HIDDEN.sub("", str(text))


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
    return _render(clean(text), plain=str, esc=str, code_=str, bold_=str, italic_=str,
                   link_=lambda label, url: label if label == url else f"{label} ({url})")


def _no_mentions(text: str) -> str:
    return _DISCORD_MENTION.sub("@\u200b", text)


def _discord_plain(text: str) -> str:
    """Cleaned text Discord shows as typed: no mention pings or renders, no spoiler or strikethrough."""
    return _DISCORD_MARKERS.sub(r"\\\1", _no_mentions(text))


def render_discord(text: str) -> str:
    """Discord markdown: the same markers; escapes stay escaped; literal text stays literal."""
    return _render(clean(text), plain=_discord_plain, esc=lambda c: "\\" + c,
                   code_=lambda c: f"`{_no_mentions(c)}`",
                   bold_=lambda t: f"**{t}**", italic_=lambda t: f"_{t}_",
                   link_=lambda label, url: f"[{label}]({url})")


def _slack_escape(text: str) -> str:
    """Slack's escaping: `<!channel>`, `<@U1>` and `<#C1>` stay text (Slack reads only `<...>` as such)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(text: str) -> str:
    """Slack mrkdwn: `*bold*`, `_italic_`, `<url|text>`; &, < and > escaped; `- ` lists as bullets."""
    lines = [("• " + line[2:]) if line.startswith("- ") else line for line in clean(text).split("\n")]
    return _render("\n".join(lines), plain=_slack_escape, esc=_slack_escape,
                   code_=lambda c: f"`{_slack_escape(c)}`", bold_=lambda t: f"*{t}*", italic_=lambda t: f"_{t}_",
                   link_=lambda label, url: f"<{_slack_escape(url)}|{label}>")


def progress_line(progress: float, text: str) -> str:
    """`[ 37%] preparing labels`: the percentage once, also when the text ends with it too."""
    return f"[{progress:4.0%}] {text.removesuffix(f': {progress:.0%}')}"
