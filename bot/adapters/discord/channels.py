"""Who may read what on Discord: a member's readable channels and private-thread scopes, from the
guild's roles and overwrites (no extra API calls); a thread filed under its parent channel."""

from __future__ import annotations

from typing import Any

import discord

__all__ = ["bot_reads", "bot_sees_private_threads", "channel_access", "channel_and_thread"]


def channel_access(guild: discord.Guild, member: discord.Member, where: Any) -> tuple[frozenset[str], frozenset[str]]:
    """(readable channels, private scopes) of the member, from one pass over the guild's channels.

    Readable: View Channel and Read Message History (roles + overwrites). Private scopes: the
    private threads whose pictures the member may see: the thread they ask from (Discord shows it
    to them), and, by channel id, every private thread of a readable channel where they also have
    Manage Threads."""
    readable, scopes = set(), ({str(where.id)} if isinstance(where, discord.Thread) else set())
    for channel in guild.channels:
        if isinstance(channel, discord.CategoryChannel):
            continue
        perms = channel.permissions_for(member)
        if perms.view_channel and perms.read_message_history:
            readable.add(str(channel.id))
            if perms.manage_threads:
                scopes.add(str(channel.id))
    return frozenset(readable), frozenset(scopes)


def bot_sees_private_threads(thread: discord.Thread) -> bool:
    try:
        return thread.permissions_for(thread.guild.me).manage_threads
    except discord.ClientException:  # the parent is not cached: assume not
        return False


def bot_reads(channel: Any) -> bool:
    perms = channel.permissions_for(channel.guild.me)
    return perms.view_channel and perms.read_message_history


def channel_and_thread(channel: Any) -> tuple[str, str | None]:
    """(channel id, thread id): a thread's messages belong to its parent channel for permissions."""
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    return (str(channel.id) if channel is not None else ""), None
