"""Discord through discord.py: every plugin command as an application command, answers as edits of one
message, long jobs in threads, persistent buttons, and the images people post fed to the index.

Nothing Discord-shaped leaves this module: interactions become `bot.commands.Request`s (the
member's readable channels computed from roles and overwrites), `Reply`s are rendered here, and
posted or deleted images become `bot.events` for `app.image_posted` / `app.message_deleted`.

Threads: a picture posted in a thread is filed under its parent channel with its thread id. A
public thread's pictures follow the parent. A private thread's are `private`: a search shows them
only inside that thread (whoever is there may see it) and to members with Manage Threads on the
parent (who see every private thread there). Nobody else, whatever Discord's thread member list
says: we never ask it, so a search costs no extra calls and never trusts a stale member cache. A
deleted thread, or a private one the bot is removed from, leaves the index.

Discord's rules this module keeps (see FIELD-NOTES.md):
- every interaction is deferred at once (3 s);
- the interaction token lives 15 min: after `discord_token_ttl` seconds (or a 50027 answer) the
  answer moves to plain channel messages sent with the bot token; long jobs use a thread and the
  bot token from the start;
- progress edits are throttled per channel (`discord_edit_interval`); discord.py waits on the
  rate-limit headers for the rest;
- files fit the interaction's `attachment_size_limit`;
- nothing the bot sends pings: the client's default `allowed_mentions` allow no mention, and echoed
  text is rendered literal (`bot.markup`);
- buttons are `DynamicItem`s whose custom_id carries the action, so they work after a restart.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import aiohttp
import discord
import yarl

from bot.actions import decode_action, encode_action
from bot.adapters._discord_payloads import (
    MAX_BUTTONS,
    clip_text,
    command_payloads,
    fit_images,
    fold_multiple,
    interaction_options,
    is_image,
    message_menus,
)
from bot.commands import Action, Attachment, CommandSpec, Reply, Request
from bot.events import ChannelRemoved, ImagePosted, MessageDeleted
from bot.intake import Downloader, FileHosts, ImageLimits, download_attachment, unreachable
from bot.markup import clean, escape, render_discord
from engine.errors import UserError

log = logging.getLogger(__name__)

PLATFORM = "discord"
DISCORD_FILE_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
_STYLES = {"primary": discord.ButtonStyle.primary, "secondary": discord.ButtonStyle.secondary,
           "danger": discord.ButtonStyle.danger}
_INVALID_TOKEN = 50027
TOKEN_REJECTED = ("Discord rejected DISCORD_TOKEN (improper token). Copy the bot token again from the "
                  "Developer Portal > Bot > Reset Token.")


# ---- the registry `clipbot run` reads ---------------------------------------------------------------
def configured(settings: Any) -> bool:
    return bool(settings.discord_token)


async def serve(app: Any, settings: Any, stop_event: asyncio.Event) -> None:
    """Run the Discord bot until `stop_event` is set."""
    _point_discord_py_at(settings)
    adapter = DiscordAdapter(app, settings)
    await adapter.run(stop_event)


@asynccontextmanager
async def open_history(app: Any, settings: Any) -> AsyncIterator["DiscordHistory"]:
    """Discord's message history over REST only (no gateway session), for `clipbot index backfill`
    run from a shell while the bot itself may be serving elsewhere."""
    if not configured(settings):
        raise UserError("Reading discord history needs the bot's token: set DISCORD_TOKEN (as for `clipbot run`).")
    _point_discord_py_at(settings)
    adapter = DiscordAdapter(app, settings)
    adapter.client = discord.Client(intents=discord.Intents.none())
    try:
        try:
            await adapter.client.login(settings.discord_token.get_secret_value())
        except discord.LoginFailure:
            raise UserError(TOKEN_REJECTED) from None
        except aiohttp.ClientConnectorError as exc:
            raise unreachable("Discord", exc) from None
        yield DiscordHistory(adapter)
    finally:
        await adapter.client.close()
        await adapter.files.close()


def _point_discord_py_at(settings: Any) -> None:
    # discord.py reads these class attributes on every request / connect (a rate-limit proxy, or tests).
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class _Client(discord.Client):
    def __init__(self, adapter: "DiscordAdapter", intents: discord.Intents) -> None:
        # Every message, edit and follow-up: a label or prompt saying @everyone must not ping anyone.
        super().__init__(intents=intents, guild_ready_timeout=0.5, allowed_mentions=discord.AllowedMentions.none())
        self.adapter = adapter

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ActionButton)  # clicks on buttons sent before a restart still arrive
        await self.adapter.sync_commands(self)

    async def on_ready(self) -> None:
        log.info("Discord: connected as %s to %d server(s)", self.user, len(self.guilds))
        await self.adapter.started()

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is discord.InteractionType.application_command:
            await self.adapter.on_command(interaction)

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_raw_message_delete(self, event: discord.RawMessageDeleteEvent) -> None:
        await self.adapter.on_deleted(event.guild_id, event.channel_id, [event.message_id])

    async def on_raw_bulk_message_delete(self, event: discord.RawBulkMessageDeleteEvent) -> None:
        await self.adapter.on_deleted(event.guild_id, event.channel_id, sorted(event.message_ids))

    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        await self.adapter.on_channels_gone(channel.guild.id, [channel.id])

    async def on_raw_thread_delete(self, event: discord.RawThreadDeleteEvent) -> None:
        # raw: a thread the cache never held (archived, or from before a restart) goes too
        await self.adapter.on_channels_gone(event.guild_id, [event.thread_id])

    async def on_thread_remove(self, thread: discord.Thread) -> None:
        # the bot was removed from the thread (THREAD_MEMBERS_UPDATE) or lost sight of it: a public
        # thread stays readable through its parent; a private one is no longer ours to show
        if thread.is_private() and not _bot_sees_private_threads(thread):
            await self.adapter.on_channels_gone(thread.guild.id, [thread.id])

    async def on_guild_channel_update(self, before: discord.abc.GuildChannel, after: discord.abc.GuildChannel) -> None:
        if _bot_reads(before) and not _bot_reads(after):  # the bot lost access: what it learned there goes
            await self.adapter.on_channels_gone(after.guild.id, [after.id])

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        await self.adapter.on_channels_gone(guild.id, [c.id for c in guild.channels])


class ActionButton(discord.ui.DynamicItem[discord.ui.Button], template=r"cb1:[\s\S]+"):
    """A reply's `Action` as a button; the custom_id is the encoded action, nothing is kept in memory."""

    def __init__(self, action: Action | None, custom_id: str = "") -> None:
        if action is not None:
            custom_id = encode_action(action)
        label = action.label if action is not None else "…"
        style = _STYLES.get(action.style, discord.ButtonStyle.secondary) if action else discord.ButtonStyle.secondary
        super().__init__(discord.ui.Button(label=clean(label)[:80], style=style, custom_id=custom_id))
        self.action = action

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: Any) -> "ActionButton":
        try:
            return cls(decode_action(match.group(0), label=item.label or ""))
        except ValueError:  # a button from an older, incompatible version: say so on click
            return cls(None, match.group(0))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.adapter.on_click(interaction, self.action)  # type: ignore[attr-defined]


class DiscordAdapter:
    platform = PLATFORM

    def __init__(self, app: Any, settings: Any) -> None:
        self.app = app
        self.settings = settings
        self.client: _Client | None = None
        self.throttle = _Throttle(settings.discord_edit_interval)
        self._started = False
        # The commands Discord serves: every plugin's that is offered here (not the local chat's /post).
        self.commands: dict[str, CommandSpec] = {n: s for n, s in app.commands.items() if s.offered_on(PLATFORM)}
        self.menus = message_menus(self.commands)  # Apps > "What is this?": menu name -> (command, option)
        self._resumed: list[asyncio.Task] = []
        # Attachments come from Discord's CDN only: an API base override (a proxy) does not widen that.
        self.limits = ImageLimits.of(settings)
        self.files = Downloader(FileHosts(hosts=DISCORD_FILE_HOSTS, test_hosts=settings.test_file_hosts),
                                platform="Discord", max_bytes=self.limits.max_bytes,
                                refusal="I only fetch files from Discord's own file servers.")

    # ---- life cycle -------------------------------------------------------------------------------
    async def run(self, stop_event: asyncio.Event) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        self.app.history_sources[PLATFORM] = DiscordHistory(self)
        try:
            while not await self._run_client(intents, stop_event):
                intents.message_content = False
        finally:
            await self.files.close()

    async def _run_client(self, intents: discord.Intents, stop_event: asyncio.Event) -> bool:
        """Run one client until stopped (True), or False when Discord refused the privileged intent."""
        self.client = client = _Client(self, intents)
        if not intents.message_content:
            log.warning("Discord: running WITHOUT the Message Content intent: images posted in channels are not "
                        "indexed. Enable it under Developer Portal > Bot > Privileged Gateway Intents.")
        started = asyncio.create_task(client.start(self.settings.discord_token.get_secret_value()))
        stopping = asyncio.create_task(stop_event.wait())
        await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
        await client.close()  # stops a running client; after a failed start it closes its HTTP session
        stopping.cancel()
        await asyncio.gather(started, stopping, return_exceptions=True)
        error = started.exception() if not started.cancelled() else None
        if isinstance(error, discord.PrivilegedIntentsRequired) and intents.message_content:
            log.warning("Discord refused the Message Content intent (privileged intents are off for this bot).")
            return False
        if isinstance(error, discord.LoginFailure):
            raise UserError(TOKEN_REJECTED)
        if isinstance(error, aiohttp.ClientConnectorError):
            raise unreachable("Discord", error) from None
        if error is not None:
            raise error
        return True

    async def started(self) -> None:
        """Once per process, after the first READY: plugins may resume work (hook clipbot_startup)."""
        if not self._started:
            self._started = True
            await self.app.startup()
            # Redis down at start: say so once in the log and pick the jobs up once it is back.
            async for conversation, replies in self.app.resume_jobs(PLATFORM, unreachable=log.warning):
                # a job that was running when the bot stopped: its answers go where it was asked
                self._resumed.append(asyncio.create_task(self._deliver_logged(conversation, replies)))
            if self._resumed:
                log.info("Discord: following %d unfinished job(s) from before the restart", len(self._resumed))

    async def _deliver_logged(self, conversation: dict, replies: AsyncIterator[Reply]) -> None:
        try:
            await self.deliver(conversation, replies)
        except Exception:
            log.exception("Discord: could not resume answering in %s", conversation)

    async def sync_commands(self, client: discord.Client) -> None:
        payloads = command_payloads(self.commands)
        guild = self.settings.discord_dev_guild
        if guild:
            await client.http.bulk_upsert_guild_commands(client.application_id, guild, payloads)
            log.info("Discord: synced %d commands to server %s (dev guild)", len(payloads), guild)
        else:
            await client.http.bulk_upsert_global_commands(client.application_id, payloads)
            log.info("Discord: synced %d commands globally", len(payloads))

    # ---- commands and clicks ----------------------------------------------------------------------
    async def on_command(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)  # first thing: the 3-second rule
        data: dict = interaction.data or {}  # type: ignore[assignment]
        try:
            if data.get("type") == 3:
                menu = self.menus.get(data.get("name", ""))
                if menu is None:
                    raise UserError(f"I don't know the menu command {data.get('name')!r}.")
                command, options = menu[0], {menu[1]: await self._menu_image(data)}
            else:
                command = data.get("name", "")
                options, files = interaction_options(data)
                for name, found in files.items():
                    options[name] = await self.attachment(found)
                options = fold_multiple(self.commands.get(command), options)
        except UserError as exc:
            await _ReplyStream(self, interaction).send(Reply(text=str(exc), error=True, ephemeral=True, final=True))
            return
        await self.answer(interaction, command, options)

    async def on_click(self, interaction: discord.Interaction, action: Action | None) -> None:
        await interaction.response.defer(thinking=True)
        if action is None:
            await _ReplyStream(self, interaction).send(Reply(
                text="This button is from an older version of the bot and no longer works.", ephemeral=True,
                error=True, final=True))
            return
        await self.answer(interaction, action.command, dict(action.options))

    async def answer(self, interaction: discord.Interaction, command: str, options: dict[str, Any]) -> None:
        """Dispatch one request from the interaction's user and render its replies."""
        stream = _ReplyStream(self, interaction)
        try:
            if interaction.guild is None or not isinstance(interaction.user, discord.Member):
                raise UserError("clipbot answers in servers, not in direct messages.")
            spec = self.commands.get(command)
            conversation = stream.conversation()
            opener = None
            if spec is not None and spec.long_running:  # the thread opens at the first public reply
                stream.thread_name = _thread_name(command, options, interaction.user.display_name)

                async def opener() -> dict:
                    conversation.update(await stream.open_if_needed())
                    return conversation
            request = self._request(interaction, command, options, conversation, opener)
        except UserError as exc:
            await stream.send(Reply(text=str(exc), error=True, ephemeral=True, final=True))
            return
        async for reply in self.app.handle(request):
            try:
                await stream.send(reply)
            except Exception:  # one undeliverable reply must not leave the user at "thinking..."
                log.exception("Discord: could not deliver a reply to /%s", command)
                if reply.final:
                    await _try(stream.send(Reply(text="I could not post that answer here (see the bot's log).",
                                                 error=True, final=True)))

    def _request(self, interaction: discord.Interaction, command: str, options: dict[str, Any],
                 conversation: dict, open_conversation: Any = None) -> Request:
        member: discord.Member = interaction.user  # type: ignore[assignment]
        guild = interaction.guild
        channel_id, thread_id = _channel_and_thread(interaction.channel)
        readable, scopes = channel_access(guild, member, interaction.channel)
        return Request(
            command=command, options=options, user_id=str(member.id), channel_id=channel_id, platform=PLATFORM,
            is_admin=member.guild_permissions.manage_guild, thread_id=thread_id, space_id=str(guild.id),
            readable_channels=readable, user_name=member.display_name,
            conversation=conversation, open_conversation=open_conversation,
            private_scopes=scopes,
        )

    async def _menu_image(self, data: dict) -> Attachment:
        message = (data.get("resolved") or {}).get("messages", {}).get(str(data.get("target_id")), {})
        for found in message.get("attachments") or ():
            if is_image(found.get("filename", ""), found.get("content_type")):
                return await self.attachment(found)
        raise UserError("That message has no image for me to look at.")

    # ---- files -------------------------------------------------------------------------------------
    async def attachment(self, found: dict) -> Attachment:
        """Download an attachment (Discord's file hosts only), check it, store its bytes."""
        return await download_attachment(self.files, self.app.engine.blobs, found["url"],
                                          filename=found.get("filename") or "image", limits=self.limits,
                                          source_id=str(found.get("id", "")),
                                          declared_size=int(found.get("size") or 0))

    # ---- indexing ----------------------------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        if message.guild is None or message.author.bot:
            return
        event = await self.image_event(message)
        if event is not None:
            await self.app.image_posted(event)

    async def image_event(self, message: discord.Message) -> ImagePosted | None:
        """The message's images, downloaded and stored now (their URLs expire); None without any."""
        attachments = []
        for found in message.attachments:
            if not is_image(found.filename, found.content_type):
                continue
            try:
                attachments.append(await self.attachment(found.to_dict()))
            except UserError as exc:
                log.info("Discord: not indexing %s from message %s: %s", found.filename, message.id, exc)
        if not attachments:
            return None
        channel = message.channel
        if isinstance(channel, discord.PartialMessageable):  # not cached: is it a thread, a private one?
            try:
                channel = await self._channel(channel.id)
            except discord.HTTPException:  # filed under its own id then: a channel nobody is shown
                log.info("Discord: could not look up channel %s of message %s", channel.id, message.id)
        channel_id, thread_id = _channel_and_thread(channel)
        return ImagePosted(
            platform=PLATFORM, space_id=str(message.guild.id), channel_id=channel_id, message_id=str(message.id),
            author_id=str(message.author.id), posted_at=message.created_at.timestamp(), permalink=message.jump_url,
            attachments=tuple(attachments), thread_id=thread_id, text=message.content,
            author_name=message.author.display_name,
            private=isinstance(channel, discord.Thread) and channel.is_private(),
        )

    async def on_deleted(self, guild_id: int | None, channel_id: int, message_ids: list[int]) -> None:
        if guild_id is None:
            return
        channel, _ = _channel_and_thread(self.client.get_channel(channel_id) if self.client else None)
        for message_id in message_ids:
            await self.app.message_deleted(MessageDeleted(
                platform=PLATFORM, space_id=str(guild_id), channel_id=channel or str(channel_id),
                message_id=str(message_id)))

    async def on_channels_gone(self, guild_id: int, channel_ids: list[int]) -> None:
        for channel_id in channel_ids:
            await self.app.channel_removed(ChannelRemoved(platform=PLATFORM, space_id=str(guild_id),
                                                          channel_id=str(channel_id)))

    # ---- answering a stored conversation (a job followed again after a restart) ------------------------
    async def deliver(self, conversation: dict, replies: AsyncIterator[Reply]) -> None:
        """Post a reply stream into a conversation recorded earlier, with the bot token."""
        channel = await self._channel(int(conversation.get("thread") or conversation["channel"]))
        stream = _ReplyStream(self, None, channel=channel, message_id=conversation.get("message"))
        async for reply in replies:
            await stream.send(reply)

    async def _channel(self, channel_id: int) -> Any:
        channel = self.client.get_channel(channel_id)  # type: ignore[union-attr]
        return channel or await self.client.fetch_channel(channel_id)  # type: ignore[union-attr]


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


def _bot_sees_private_threads(thread: discord.Thread) -> bool:
    try:
        return thread.permissions_for(thread.guild.me).manage_threads
    except discord.ClientException:  # the parent is not cached: assume not
        return False


def _bot_reads(channel: Any) -> bool:
    perms = channel.permissions_for(channel.guild.me)
    return perms.view_channel and perms.read_message_history


def _channel_and_thread(channel: Any) -> tuple[str, str | None]:
    """(channel id, thread id): a thread's messages belong to its parent channel for permissions."""
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    return (str(channel.id) if channel is not None else ""), None


class _Throttle:
    """At most one progress edit per channel every `interval` seconds (Discord: ~5 edits / 5 s)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[int, float] = {}

    def ready(self, channel_id: int) -> bool:
        now = time.monotonic()
        if now - self._last.get(channel_id, -1e9) < self.interval:
            return False
        self._last[channel_id] = now
        return True


class _ReplyStream:
    """One answer on Discord: the deferred "thinking" message, edited in place for progress and the final
    reply; follow-ups for more. Long jobs, and answers that outlive the interaction token, use plain
    messages in a channel or thread sent with the bot token."""

    def __init__(self, adapter: DiscordAdapter, interaction: discord.Interaction | None, *,
                 channel: Any = None, message_id: int | str | None = None) -> None:
        self.adapter = adapter
        self.interaction = interaction
        self.channel = channel  # set: answer with the bot token here
        self.message: Any = None  # the message progress/final replies replace (bot-token mode)
        self._message_id = int(message_id) if message_id else None
        self.original_free = interaction is not None  # the "thinking..." placeholder is still unused
        self.progress_on_original = False
        self.progress_followup: discord.WebhookMessage | None = None
        self.shown = False  # something public is already on screen
        self.thread_name: str | None = None  # a long job's thread, opened at its first public reply
        if interaction is not None:
            self.deadline = interaction.created_at.timestamp() + adapter.settings.discord_token_ttl
            self.limit = interaction.filesize_limit
        else:
            self.deadline, self.limit = float("inf"), 10 * 1024 * 1024

    def conversation(self) -> dict:
        where = self.channel or (self.interaction.channel if self.interaction else None)
        channel_id, thread_id = _channel_and_thread(where)
        return {"platform": PLATFORM, "guild": str(getattr(getattr(where, "guild", None), "id", "")),
                "channel": channel_id, "thread": thread_id,
                "message": str(self.message.id) if self.message is not None else None}

    async def open_if_needed(self) -> dict:
        """Open the long job's thread unless it is open (or there is none to open); the conversation."""
        if self.thread_name is not None:
            name, self.thread_name = self.thread_name, None
            await self.open_thread(name)
        return self.conversation()

    async def open_thread(self, name: str) -> None:
        """Move this answer into a thread (a new one off the placeholder, or the thread we are in)."""
        where = self.interaction.channel  # type: ignore[union-attr]
        if isinstance(where, discord.Thread):
            self.channel = where
            await self._edit_original(content="Working on it here.")
            return
        original = await self.interaction.original_response()  # type: ignore[union-attr]
        await self._edit_original(content=render_discord(f"Working on it: {escape(name)}."))
        try:
            self.channel = await original.create_thread(name=name[:100], auto_archive_duration=1440)
        except discord.HTTPException as exc:  # no Create Public Threads permission: stay in the channel
            log.info("Discord: no thread for %s (%s); answering in the channel", name, exc)
            self.channel = where

    async def _edit_original(self, **fields: Any) -> None:
        await self.interaction.edit_original_response(**fields)  # type: ignore[union-attr]
        self.original_free = False
        self.shown = True

    async def send(self, reply: Reply) -> None:
        if self.thread_name is not None and reply.public:
            await self.open_if_needed()
        if self.channel is None and time.time() >= self.deadline:
            self._move_to_channel()
        is_progress = reply.progress is not None and not reply.final
        if reply.final and self._nothing_to_replace() and not (reply.text or reply.images or reply.actions):
            return  # the stream's closing marker after answers already posted
        if is_progress and not self.adapter.throttle.ready(self._channel_key()):
            return  # dropped: the next progress reply or the final one replaces it anyway
        fields = await self._fields(reply)
        try:
            await self._send(reply, is_progress, fields)
        except discord.HTTPException as exc:
            if self.channel is not None or not _token_dead(exc):
                raise
            log.info("Discord: interaction token no longer valid; answering with channel messages")
            self._move_to_channel()
            await self._send(reply, is_progress, await self._fields(reply))

    async def _send(self, reply: Reply, is_progress: bool, fields: dict) -> None:
        if self.channel is not None:
            await self._send_with_bot_token(reply, is_progress, fields)
        elif reply.ephemeral and not self.shown and not is_progress:
            await self.interaction.delete_original_response()  # type: ignore[union-attr]
            self.original_free = False
            await self.interaction.followup.send(ephemeral=True, **_as_new(fields))  # type: ignore[union-attr]
        elif (is_progress or reply.final) and (self.original_free or self.progress_on_original):
            await self._edit_original(**fields)
            self.progress_on_original = is_progress
        elif (is_progress or reply.final) and self.progress_followup is not None:
            await self.progress_followup.edit(**fields)
            self.progress_followup = None if reply.final else self.progress_followup
        else:
            sent = await self.interaction.followup.send(wait=True, **_as_new(fields))  # type: ignore[union-attr]
            self.shown = True
            self.progress_followup = sent if is_progress else None

    async def _send_with_bot_token(self, reply: Reply, is_progress: bool, fields: dict) -> None:
        if self.message is None and self._message_id is not None:
            self.message = self.channel.get_partial_message(self._message_id)
            self._message_id = None
        if self.message is not None and (is_progress or reply.final):
            await self.message.edit(**fields)
            if reply.final:
                self.message = None
            return
        sent = await self.channel.send(**_as_new(fields))
        self.message = sent if is_progress else None

    def _nothing_to_replace(self) -> bool:
        return self.shown and not self.progress_on_original and self.progress_followup is None \
            and self.message is None and not self.original_free

    def _move_to_channel(self) -> None:
        self.channel = self.interaction.channel  # type: ignore[union-attr]
        self.message = None
        self.progress_on_original = False

    def _channel_key(self) -> int:
        where = self.channel or self.interaction.channel  # type: ignore[union-attr]
        return where.id

    async def _fields(self, reply: Reply) -> dict:
        images = await asyncio.to_thread(fit_images, reply.images, self.limit) if reply.images else []
        files = [discord.File(io.BytesIO(i.data), filename=i.filename, description=i.description or None)
                 for i in images]
        view = discord.ui.View(timeout=None)
        for action in reply.actions[:MAX_BUTTONS]:
            try:
                view.add_item(ActionButton(action))
            except ValueError as exc:  # options too long for a custom_id: the answer goes without it
                log.warning("Discord: button %r left out: %s", action.label, exc)
        text = clip_text(render_discord(reply.text)) if reply.text else ("" if files else "Done.")
        return {"content": text, "attachments": files, "view": view}


def _as_new(fields: dict) -> dict:
    """Edit fields → send fields (`files=` on a new message, no empty view)."""
    out = {"content": fields["content"] or None, "files": fields["attachments"]}
    if fields["view"].children:
        out["view"] = fields["view"]
    return out


def _thread_name(command: str, options: dict[str, Any], user: str) -> str:
    """`/imagine a watercolor fox`: the first text option says what the thread is about."""
    text = next((v for v in options.values() if isinstance(v, str) and v.strip()), "")
    return clean(f"/{command} {' '.join(text.split())}" if text else f"/{command} for {user}")[:100]


async def _try(coro: Any) -> None:
    try:
        await coro
    except Exception:
        log.exception("Discord: could not post the error notice either")


def _token_dead(exc: discord.HTTPException) -> bool:
    return exc.status == 401 or exc.code == _INVALID_TOKEN


class DiscordHistory:
    """`HistorySource` over `channel.history`, newest first; the cursor is the oldest message id seen."""

    def __init__(self, adapter: DiscordAdapter) -> None:
        self.adapter = adapter

    async def history(self, space_id: str, channel_id: str, cursor: str | None,
                      limit: int) -> tuple[list[ImagePosted], str | None]:
        try:
            channel = await self.adapter._channel(int(channel_id))
        except ValueError:
            raise UserError(f"{channel_id!r} is not a Discord channel id (Developer Mode > Copy Channel ID).") from None
        except (discord.NotFound, discord.Forbidden):
            raise UserError("I cannot see that channel: is the bot in it, with Read Message History?") from None
        if str(getattr(getattr(channel, "guild", None), "id", "")) != str(space_id):
            raise UserError("That channel is not in this server.")
        before = discord.Object(int(cursor)) if cursor else None
        events, oldest, seen = [], None, 0
        async for message in channel.history(limit=limit, before=before):
            seen, oldest = seen + 1, message.id
            if message.author.bot:
                continue
            event = await self.adapter.image_event(message)
            if event is not None:
                events.append(event)
        return events, (str(oldest) if seen == limit and oldest is not None else None)
