"""TEMPORARY stub of the interface in /work/coord/INTERFACES.md (main's version replaces it on merge)."""

from __future__ import annotations

import re


def render_slack(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"<\2|\1>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"*\1*", text)
