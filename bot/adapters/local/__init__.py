"""The local chat: a terminal chat on the embedded engine, and the test backend for plugins.

`chat` is the adapter (a typed line in, its replies printed); `session` the conversation (lines
read, commands side by side, Ctrl-C); `terminal` where lines come from (prompt_toolkit on a
terminal, plain lines from a pipe); `channel` the chat's own channel life (`/post`, the history
backfills walk), a built-in plugin named "localchat"; `model_line` what the chat says at start
about the model; `entry` its registration in `clipbot.adapters` (`adapter`).
"""

from bot.adapters.local.channel import LocalHistory
from bot.adapters.local.chat import LocalAdapter, action_command
from bot.markup import progress_line
from bot.adapters.local.entry import LocalChat, adapter
from bot.adapters.local.terminal import PROMPT

__all__ = ["PROMPT", "LocalAdapter", "LocalChat", "LocalHistory", "action_command", "adapter", "progress_line"]
