"""Reading a /search query: weighted terms and inline filters (light: no torch).

`whiteboard diagram +sunset -people in:all from:@ana after:2024-05-01 last week`
  - plain words form the main phrase (weight 1); `+x` adds a term (weight 1), `-x` pushes
    away from one (weight -0.5); quotes group words: `-"red car"`;
  - `in:#channel` / `in:<#id>` (default: the current channel), `in:all` (every readable
    channel); `from:@user` / `from:<@id>` / `from:me`;
  - `text:"exact words"` keeps only pictures with those words, in that order, on them (OCR),
    in their message or in their file name (any case; several `text:` must all match);
  - `before:` / `after:` take YYYY-MM-DD; `today`, `yesterday`, `this week`, `last week`,
    `this month`, `last month`, `this year`, `last year`, `past N days` set a date range.
Dates are UTC days.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from engine.errors import UserError
from engine.index.text import tokens

NEGATIVE_WEIGHT = -0.5
MAX_TERMS = 8
MAX_TERM_CHARS = 200
_MENTION = re.compile(r"^<[#@]!?&?([A-Za-z0-9_.-]+)(?:\|[^>]*)?>$")
_PHRASES = [(re.compile(r"(?<!\S)" + pattern + r"(?!\S)", re.I), kind) for pattern, kind in [
    (r"(?:past|last) (\d{1,4}) days?", "days"),
    (r"this week", "this week"),
    (r"last week", "last week"),
    (r"this month", "this month"),
    (r"last month", "last month"),
    (r"this year", "this year"),
    (r"last year", "last year"),
    (r"yesterday", "yesterday"),
    (r"today", "today"),
]]


@dataclass(frozen=True)
class ParsedQuery:
    terms: tuple[tuple[str, float], ...] = ()  # (text, weight)
    channels: tuple[str, ...] = ()  # explicit in: channels (ids)
    all_channels: bool = False
    authors: tuple[str, ...] = ()
    after: float | None = None
    before: float | None = None
    notes: tuple[str, ...] = field(default=())  # what the filters mean, for the reply
    phrases: tuple[str, ...] = ()  # text:"..." filters

    @property
    def text(self) -> str:
        return " ".join(("" if w == 1 and i == 0 else "+" if w > 0 else "-") + t
                        for i, (t, w) in enumerate(self.terms))


def parse_query(text: str, *, user_id: str = "", now: datetime | None = None) -> ParsedQuery:
    """Split a typed query into weighted terms and filters; raises UserError on a bad filter."""
    now = now or datetime.now(timezone.utc)
    after, before, notes, text = _date_phrases(text or "", now)
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.replace('"', " ").split()
    main: list[str] = []
    extra: list[tuple[str, float]] = []
    channels: list[str] = []
    authors: list[str] = []
    phrases: list[str] = []
    all_channels = False
    for word in words:
        key, sep, value = word.partition(":")
        key = key.lower()
        if sep and key in ("in", "from", "before", "after", "text") and value:
            if key == "text":
                phrases.append(check_phrase(value))
            elif key == "in":
                if value.lower() in ("all", "#all", "everywhere"):
                    all_channels = True
                else:
                    channels.append(_ref(value, "#"))
            elif key == "from":
                authors.append(user_id if value.lower() in ("me", "@me") and user_id else _ref(value, "@"))
            elif key == "after":
                after = _day(value, "after", now)
            else:
                before = _day(value, "before", now)
        elif word.startswith(("+", "-")) and len(word) > 1:
            extra.append((word[1:], 1.0 if word[0] == "+" else NEGATIVE_WEIGHT))
        else:
            main.append(word)
    terms = ([(" ".join(main), 1.0)] if main else []) + extra
    _check_terms(terms)
    if after is not None and before is not None and after >= before:
        raise UserError("That date range is empty: `after:` must come before `before:`.")
    return ParsedQuery(tuple(terms), tuple(dict.fromkeys(channels)), all_channels, tuple(dict.fromkeys(authors)),
                       after, before, tuple(notes), tuple(dict.fromkeys(phrases)))


def check_phrase(phrase: str) -> str:
    """A `text:` filter's phrase, tidied; UserError when it has no word to match."""
    phrase = " ".join(phrase.split())
    if not tokens(phrase):
        raise UserError("`text:` needs words to look for, e.g. `text:\"quarterly roadmap\"`.")
    if len(phrase) > MAX_TERM_CHARS:
        raise UserError(f"Keep each text: phrase under {MAX_TERM_CHARS} characters.")
    return phrase


def _check_terms(terms: list[tuple[str, float]]) -> None:
    if len(terms) > MAX_TERMS:
        raise UserError(f"That's {len(terms)} search terms; {MAX_TERMS} at most.")
    long = next((t for t, _ in terms if len(t) > MAX_TERM_CHARS), None)
    if long:
        raise UserError(f"Keep each search term under {MAX_TERM_CHARS} characters.")
    if terms and all(w < 0 for _, w in terms):
        raise UserError("Say what to look for, not only what to leave out (e.g. `beach -people`).")


def _ref(value: str, sigil: str) -> str:
    """A channel or user given as a mention (`<#123>`, `<@U1|ana>`), `#name`/`@name` or an id."""
    match = _MENTION.match(value)
    if match:
        return match.group(1)
    return value.lstrip(sigil)


def _day(value: str, what: str, now: datetime) -> float:
    today = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if value.lower() in ("today", "yesterday"):
        return (today - timedelta(days=value.lower() == "yesterday")).timestamp()
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise UserError(f"`{what}:` takes a date like 2024-05-31, not '{value}'.") from None
    return day.timestamp()


def _date_phrases(text: str, now: datetime) -> tuple[float | None, float | None, list[str], str]:
    today = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    after = before = None
    notes = []
    for pattern, kind in _PHRASES:
        match = pattern.search(text)
        if not match:
            continue
        text = (text[:match.start()] + " " + text[match.end():]).strip()
        start, end = _range(kind, today, match)
        after, before = start.timestamp(), end.timestamp()
        notes.append(f"{match.group(0).lower()}: {start:%Y-%m-%d} to {(end - timedelta(days=1)):%Y-%m-%d}")
        break  # one phrase sets the range; explicit before:/after: may narrow it
    return after, before, notes, text


def _range(kind: str, today: datetime, match: re.Match) -> tuple[datetime, datetime]:
    tomorrow = today + timedelta(days=1)
    week = today - timedelta(days=today.weekday())
    month = today.replace(day=1)
    if kind == "days":
        return tomorrow - timedelta(days=int(match.group(1))), tomorrow
    if kind == "today":
        return today, tomorrow
    if kind == "yesterday":
        return today - timedelta(days=1), today
    if kind == "this week":
        return week, tomorrow
    if kind == "last week":
        return week - timedelta(days=7), week
    if kind == "this month":
        return month, tomorrow
    if kind == "last month":
        return (month - timedelta(days=1)).replace(day=1), month
    year = today.replace(month=1, day=1)
    if kind == "this year":
        return year, tomorrow
    return year.replace(year=year.year - 1), year


def describe_filters(parsed: ParsedQuery) -> str:
    """The author and date filters of a query in words ("from @bo, posted 2024-05-06 to 2024-05-12"),
    for a reply that found nothing; "" without any."""
    parts = []
    if parsed.authors:
        parts.append("from " + ", ".join("@" + a for a in parsed.authors))
    day = "%Y-%m-%d"
    if parsed.after is not None and parsed.before is not None:
        last = datetime.fromtimestamp(parsed.before, timezone.utc) - timedelta(days=1)
        parts.append(f"posted {datetime.fromtimestamp(parsed.after, timezone.utc):{day}} to {last:{day}}")
    elif parsed.after is not None:
        parts.append(f"posted on or after {datetime.fromtimestamp(parsed.after, timezone.utc):{day}}")
    elif parsed.before is not None:
        parts.append(f"posted before {datetime.fromtimestamp(parsed.before, timezone.utc):{day}}")
    return ", ".join(parts)
