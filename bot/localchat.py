"""Moved to `bot.adapters.local.channel`. Kept only while `plugins/search` imports
`history_source` from here (issue 14 moves that lookup out of the plugin); delete it then."""

from bot.adapters.local.channel import history_source

__all__ = ["history_source"]
