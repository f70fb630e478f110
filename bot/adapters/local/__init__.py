"""The local chat: a terminal chat on the embedded engine, and the test backend for plugins.

`chat` is the adapter (typed lines in, replies printed); `channel` is the chat's own channel
life (`/post`, and the history backfills walk), a built-in plugin named "localchat".
"""

from bot.adapters.local.channel import LocalHistory, history_source
from bot.adapters.local.chat import PROMPT, LocalAdapter, action_command

__all__ = ["PROMPT", "LocalAdapter", "LocalHistory", "action_command", "history_source"]
