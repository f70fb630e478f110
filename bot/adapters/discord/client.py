"""Discord through discord.py: every plugin command as an application command, answers as edits of one
message, long jobs in threads, persistent buttons, and the images people post fed to the index.

Nothing Discord-shaped leaves this package: interactions become `bot.commands.Request`s (the
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
- the interaction token lives 15 min: after CLIPBOT_DISCORD_TOKEN_TTL seconds (or a 50027 answer) the
  answer moves to plain channel messages sent with the bot token; long jobs use a thread and the
  bot token from the start;
- progress edits are throttled per channel (CLIPBOT_DISCORD_EDIT_INTERVAL); discord.py waits on the
  rate-limit headers for the rest;
- files fit the interaction's `attachment_size_limit`;
- nothing the bot sends pings: the client's default `allowed_mentions` allow no mention, and echoed
  text is rendered literal (`bot.markup`);
- buttons are `DynamicItem`s whose custom_id carries the action, so they work after a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import discord
import yarl

from bot.adapters.base import ChatSurface, Intake, count_api_answer, error_reply
from bot.adapters.discord.channels import (bot_reads, bot_sees_private_threads, channel_access,
                                           channel_and_thread)
from bot.adapters.discord.forms import form_answers, form_modal
from bot.adapters.discord.history import DiscordHistory
from bot.adapters.discord.payloads import command_payloads, fold_multiple, interaction_options, is_image, message_menus
from bot.adapters.discord.replies import PLATFORM, ActionButton, ReplyStream, Throttle, report_failure
from bot.commands import Action, Attachment, CommandSpec, Reply, Request
from bot.events import ChannelRemoved, ImagePosted, MessageDeleted
from bot.forms import filled
from bot.intake import Downloader, FileHosts, ImageLimits, unreachable
from bot.markup import clean
from engine.errors import UserError

__all__ = ["DISCORD_FILE_HOSTS", "DiscordAdapter", "TOKEN_REJECTED", "open_history", "serve"]

log = logging.getLogger("bot.adapters.discord")

DISCORD_FILE_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
TOKEN_REJECTED = ("Discord rejected DISCORD_TOKEN (improper token). Copy the bot token again from the "
                  "Developer Portal > Bot > Reset Token.")


# ---- what the registry's `adapter` (bot.adapters.discord) calls -----------------------------------
async def serve(app: Any, settings: Any, config: Any, stop_event: asyncio.Event) -> None:
    """Run the Discord bot until `stop_event` is set. `settings`: clipbot's; `config`: `DiscordSettings`."""
    _point_discord_py_at(config)
    adapter = DiscordAdapter(app, settings, config)
    await adapter.run(stop_event)


@asynccontextmanager
async def open_history(app: Any, settings: Any, config: Any) -> AsyncIterator["DiscordHistory"]:
    """Discord's message history over REST only (no gateway session), for `clipbot index backfill`
    run from a shell while the bot itself may be serving elsewhere."""
    if not config.token:
        raise UserError("Reading discord history needs the bot's token: set DISCORD_TOKEN (as for `clipbot run`).")
    _point_discord_py_at(config)
    adapter = DiscordAdapter(app, settings, config)
    adapter.client = discord.Client(intents=discord.Intents.none(), http_trace=api_trace())
    try:
        try:
            await adapter.client.login(config.token.get_secret_value())
        except discord.LoginFailure:
            raise UserError(TOKEN_REJECTED) from None
        except aiohttp.ClientConnectorError as exc:
            raise unreachable("Discord", exc) from None
        yield DiscordHistory(adapter)
    finally:
        await adapter.client.close()
        await adapter.intake.close()


def _point_discord_py_at(config: Any) -> None:
    # discord.py reads these class attributes on every request / connect (a rate-limit proxy, or tests).
    if config.api_base:
        discord.http.Route.BASE = config.api_base.rstrip("/")
    if config.gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.gateway_url)


def api_trace() -> aiohttp.TraceConfig:
    """Every REST answer discord.py gets, its retried 429s included, is seen here and counted
    (`count_api_answer`)."""
    async def on_end(_session: Any, _context: Any, params: aiohttp.TraceRequestEndParams) -> None:
        count_api_answer("discord", params.response.status)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    return trace


class _Client(discord.Client):
    def __init__(self, adapter: "DiscordAdapter", intents: discord.Intents) -> None:
        # Every message, edit and follow-up: a label or prompt saying @everyone must not ping anyone.
        super().__init__(intents=intents, guild_ready_timeout=0.5, allowed_mentions=discord.AllowedMentions.none(),
                         http_trace=api_trace())
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
        elif interaction.type is discord.InteractionType.modal_submit:
            await self.adapter.on_form(interaction)

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
        if thread.is_private() and not bot_sees_private_threads(thread):
            await self.adapter.on_channels_gone(thread.guild.id, [thread.id])

    async def on_guild_channel_update(self, before: discord.abc.GuildChannel, after: discord.abc.GuildChannel) -> None:
        if bot_reads(before) and not bot_reads(after):  # the bot lost access: what it learned there goes
            await self.adapter.on_channels_gone(after.guild.id, [after.id])

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        await self.adapter.on_channels_gone(guild.id, [c.id for c in guild.channels])


class DiscordAdapter(ChatSurface):
    platform = PLATFORM

    def __init__(self, app: Any, settings: Any, config: Any) -> None:
        self.app = app
        self.settings = settings
        self.config = config  # DiscordSettings
        self.client: _Client | None = None
        self.throttle = Throttle(config.edit_interval)
        self._started = False
        # The commands Discord serves: every plugin's that is offered here (not the local chat's /post).
        self.commands: dict[str, CommandSpec] = {n: s for n, s in app.commands.items() if s.offered_on(PLATFORM)}
        self.menus = message_menus(self.commands)  # Apps > "What is this?": menu name -> (command, option)
        self._resumed: list[asyncio.Task] = []
        # Attachments come from Discord's CDN only: an API base override (a proxy) does not widen that.
        limits = ImageLimits.of(settings)
        self.files = Downloader(FileHosts(hosts=DISCORD_FILE_HOSTS, test_hosts=settings.test_file_hosts),
                                platform="Discord", max_bytes=limits.max_bytes,
                                refusal="I only fetch files from Discord's own file servers.")
        self.intake = Intake(app.engine.blobs, limits, self.files)

    # ---- life cycle -------------------------------------------------------------------------------
    async def run(self, stop_event: asyncio.Event) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        self.app.history_sources[PLATFORM] = DiscordHistory(self)
        try:
            while not await self._run_client(intents, stop_event):
                intents.message_content = False
        finally:
            await self.intake.close()

    async def _run_client(self, intents: discord.Intents, stop_event: asyncio.Event) -> bool:
        """Run one client until stopped (True), or False when Discord refused the privileged intent."""
        self.client = client = _Client(self, intents)
        if not intents.message_content:
            log.warning("Discord: running WITHOUT the Message Content intent: images posted in channels are not "
                        "indexed. Enable it under Developer Portal > Bot > Privileged Gateway Intents.")
        started = asyncio.create_task(client.start(self.config.token.get_secret_value()))
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
            # Redis down at start: say so once in the log and pick the jobs up once it is back. Each
            # job that was running when the bot stopped answers where it was asked.
            self._resumed += await self.resume_followed_jobs(spawn=asyncio.create_task, unreachable=log.warning)
            if self._resumed:
                log.info("Discord: following %d unfinished job(s) from before the restart", len(self._resumed))

    async def sync_commands(self, client: discord.Client) -> None:
        payloads = command_payloads(self.commands)
        guild = self.config.dev_guild
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
            await ReplyStream(self, interaction).send(error_reply(exc))
            return
        await self.answer(interaction, command, options)

    async def on_click(self, interaction: discord.Interaction, action: Action | None) -> None:
        if action is not None and action.ask:  # a modal is the first answer (instead of deferring)
            await interaction.response.send_modal(form_modal(action, self.commands.get(action.command)))
            return
        await interaction.response.defer(thinking=True)
        if action is None:
            await ReplyStream(self, interaction).send(
                error_reply("This button is from an older version of the bot and no longer works."))
            return
        await self.answer(interaction, action.command, dict(action.options), clicked=_clicked(interaction))

    async def on_form(self, interaction: discord.Interaction) -> None:
        """A submitted Remix form: its action (in the custom_id) with what was typed."""
        await interaction.response.defer(thinking=True)
        try:
            action, answers = form_answers(interaction.data or {})  # type: ignore[arg-type]
        except ValueError:
            await ReplyStream(self, interaction).send(error_reply("I can't read that form any more; click again."))
            return
        await self.answer(interaction, action.command, filled(action, answers), clicked=_clicked(interaction))

    async def answer(self, interaction: discord.Interaction, command: str, options: dict[str, Any], *,
                     clicked: dict | None = None) -> None:
        """Dispatch one request from the interaction's user and render its replies."""
        stream = ReplyStream(self, interaction)
        try:
            if interaction.guild is None or not isinstance(interaction.user, discord.Member):
                raise UserError("clipbot answers in servers, not in direct messages.")
            spec = self.commands.get(command)
            conversation = stream.conversation()
            opener = None
            if spec is not None and spec.long_running:  # the thread opens at the first public reply
                stream.thread_name = _thread_name(command, options, interaction.user.display_name)
                opener = _thread_opener(stream, conversation)
            request = self._request(interaction, command, options, conversation, opener)
            if clicked is not None:  # a button: which message it is on, and how to delete that message
                request = dataclasses.replace(request, source_message=clicked,
                                              delete_source=functools.partial(self.delete_message, clicked))
        except UserError as exc:
            await stream.send(error_reply(exc))
            return
        async for reply in self.app.handle(request):
            try:
                await stream.send(reply)
            except Exception:  # one undeliverable reply must not leave the user at "thinking..."
                log.exception("Discord: could not deliver a reply to /%s", command)
                if reply.final:
                    await report_failure(stream.send(Reply(text="I could not post that answer here (see the bot's log).",
                                                 error=True, final=True)))

    def _request(self, interaction: discord.Interaction, command: str, options: dict[str, Any],
                 conversation: dict, open_conversation: Any = None) -> Request:
        member: discord.Member = interaction.user  # type: ignore[assignment]
        guild = interaction.guild
        channel_id, thread_id = channel_and_thread(interaction.channel)
        readable, scopes = channel_access(guild, member, interaction.channel)
        return Request(
            command=command, options=options, user_id=str(member.id), channel_id=channel_id, platform=PLATFORM,
            is_admin=member.guild_permissions.manage_guild, thread_id=thread_id, space_id=str(guild.id),
            readable_channels=readable, user_name=member.display_name,
            conversation=conversation, open_conversation=open_conversation,
            private_scopes=scopes, channel_nsfw=_age_restricted(interaction.channel),
            upload_limit=interaction.filesize_limit,  # the payload's attachment_size_limit
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
        return await self.intake.download(found["url"], filename=found.get("filename") or "image",
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
        channel_id, thread_id = channel_and_thread(channel)
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
        channel, _ = channel_and_thread(self.client.get_channel(channel_id) if self.client else None)
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
        stream = ReplyStream(self, None, channel=channel, message_id=conversation.get("message"))
        async for reply in replies:
            await stream.send(reply)

    async def delete_message(self, message: dict) -> None:
        """Delete a message (`Request.source_message`: channel and message ids) with the bot token."""
        try:
            await self.client.http.delete_message(int(message["channel"]), int(message["message"]))  # type: ignore[union-attr]
        except discord.NotFound:
            return  # already gone
        except discord.HTTPException as exc:
            raise UserError(f"Discord did not let me delete that message ({exc.text or exc.status}).") from None

    async def _channel(self, channel_id: int) -> Any:
        channel = self.client.get_channel(channel_id)  # type: ignore[union-attr]
        return channel or await self.client.fetch_channel(channel_id)  # type: ignore[union-attr]


def _clicked(interaction: discord.Interaction) -> dict | None:
    """The message a button (or the form it opened) is on: what its Delete deletes."""
    message = interaction.message
    return {"channel": str(interaction.channel_id), "message": str(message.id)} if message is not None else None


def _age_restricted(channel: Any) -> bool:
    """Discord's age-restricted flag (a thread has its parent's)."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def _thread_opener(stream: ReplyStream, conversation: dict) -> Callable[[], Awaitable[dict]]:
    """Opens the job's thread at the first public reply and records it in `conversation`."""
    async def opener() -> dict:
        conversation.update(await stream.open_if_needed())
        return conversation
    return opener


def _thread_name(command: str, options: dict[str, Any], user: str) -> str:
    """`/imagine a watercolor fox`: the first text option says what the thread is about."""
    text = next((v for v in options.values() if isinstance(v, str) and v.strip()), "")
    return clean(f"/{command} {' '.join(text.split())}" if text else f"/{command} for {user}")[:100]

