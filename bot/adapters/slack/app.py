"""Slack adapter: a slack-bolt async app that serves every plugin's commands in Slack.

`clipbot run` starts it when SLACK_BOT_TOKEN is set: Socket Mode when SLACK_APP_TOKEN is set
(no public URL), otherwise HTTP mode on CLIPBOT_SLACK_PORT at /slack/events, where bolt checks
every request's signature (SLACK_SIGNING_SECRET, 5-minute window) and answers 401 to forged or
stale ones before any listener runs.

Ways in, all acked at once (Slack wants an ack within 3 s) and then answered in the background:
- one slash command per plugin command (`/whatis`, `/imagine`, ...; CLIPBOT_SLACK_COMMAND_PREFIX
  is prepended; names Slack keeps for itself, like /search, become /clip-search). Slash commands
  carry only text (the shared option parser reads it) and Slack refuses them inside threads;
- message shortcuts with callback id `clipbot_<command>` ("What is this?" = `clipbot_whatis`)
  run the command on the message's picture;
- `@clipbot <command> ...` mentions, with an attached picture or in a thread (the thread's
  latest picture);
- Block Kit buttons (`action_id` prefix `clipbot:`) whose value is an encoded `Action`: a click
  is an ordinary request from the clicker, so buttons keep working after a restart.
Message events feed the index (`app.image_posted`), deletions leave it, duplicates run once.
Commands, shortcuts and clicks run once too: a signed request replayed inside Slack's 5-minute
window (or an envelope Socket Mode delivers again) carries the same `trigger_id` and is acked
but not run; the claim is in Redis when the engine has it, so every bot process agrees.
No plugin contains Slack code: the adapter reads `CommandSpec`s and renders `Reply`s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable

from bot.actions import decode_action
from bot.adapters.base import ChatSurface, error_reply
from bot.adapters.slack.manifest import slack_specs, slash_name
from bot.commands import Attachment, CommandSpec, Request
from bot.events import ChannelRemoved, MessageDeleted
from bot.forms import filled
from bot.intake import unreachable
from bot.markup import escape, render_slack
from bot.options import parse_command_text
from engine.errors import UserError

try:  # the `slack` extra; without it `configured` still answers and `serve` says what to install
    import aiohttp
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.errors import SlackApiError
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.adapters.slack.files import (PLATFORM, EventDedupe, FileFetcher, FileLocations, SlackHistory,
                                          image_files, image_posted)
    from bot.adapters.slack.forms import CALLBACK_ID as FORM_CALLBACK
    from bot.adapters.slack.forms import form_view, read_submission
    from bot.adapters.slack.post import ChannelPacer, CountingRetryHandler, ReplyPoster, Target
    _MISSING = ""
except ModuleNotFoundError as exc:
    _MISSING = exc.name or "slack-bolt"
    PLATFORM = "slack"

log = logging.getLogger("bot.adapters.slack")

EVENTS_PATH = "/slack/events"
SHORTCUT_PREFIX = "clipbot_"
ACTION_PREFIX = "clipbot:"
CACHE_SECONDS = 60.0  # channel memberships and admin flags: short, so a leave takes effect soon
UPLOAD_LIMIT = 1 << 30  # Slack takes files up to 1 GB (files.getUploadURLExternal)
_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # X-Slack-Request-Timestamp: Unix seconds
# Bolt accepts a request whose timestamp is within 5 minutes of its clock, either side: a captured
# request can come back up to 10 minutes after it was first seen. Remember its key that long.
REPLAY_TTL = 600


def replay_key(kind: str, body: dict) -> str:
    """One command, shortcut or click: Slack gives each invocation its own `trigger_id`, and a
    replayed request (its signed body cannot change) repeats it."""
    trigger = body.get("trigger_id")
    if not trigger:  # not seen from Slack; a digest of the whole payload still tells replays apart
        trigger = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return f"{kind}:{trigger}"


async def serve(app: Any, settings: Any, config: Any, stop_event: asyncio.Event) -> None:
    """Serve Slack until `stop_event` is set. `settings`: clipbot's; `config`: `SlackSettings`."""
    if _MISSING:
        raise UserError(f"Slack needs the package {_MISSING}: pip install 'clipbot[slack]'")
    adapter = SlackAdapter(app, settings, config)
    await adapter.start()
    try:
        await stop_event.wait()
    finally:
        await adapter.stop()


def _web_client(config: Any) -> "AsyncWebClient":
    kwargs = {"base_url": config.api_url} if config.api_url else {}
    client = AsyncWebClient(token=config.bot_token, **kwargs)
    # Sees every answer first (and counts the errors), then: waits out HTTP 429 with Retry-After
    # (conversations.history may allow 1 call a minute).
    client.retry_handlers.insert(0, CountingRetryHandler())
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=5))
    return client


async def _identity(client: "AsyncWebClient") -> dict[str, Any]:
    try:
        return dict((await client.auth_test()).data)
    except SlackApiError as exc:
        raise UserError(f"Slack refused SLACK_BOT_TOKEN ({exc.response.get('error')}).") from None
    except aiohttp.ClientConnectorError as exc:
        raise unreachable("Slack", exc) from None


@asynccontextmanager
async def open_history(app: Any, settings: Any, config: Any) -> AsyncIterator["SlackHistory"]:
    """Slack's message history over the Web API only (no events, no Socket Mode), for
    `clipbot index backfill` run from a shell while the bot itself may be serving elsewhere."""
    if _MISSING:
        raise UserError(f"Slack needs the package {_MISSING}: pip install 'clipbot[slack]'")
    if not config.bot_token:
        raise UserError("Reading slack history needs the bot's token: set SLACK_BOT_TOKEN (as for `clipbot run`).")
    client = _web_client(config)
    identity = await _identity(client)
    fetcher = FileFetcher(config.bot_token, max_bytes=settings.max_image_bytes,
                          max_pixels=settings.max_image_pixels, test_hosts=settings.test_file_hosts)

    async def workspace_url() -> str:
        return identity.get("url") or "https://slack.com/"

    try:
        yield SlackHistory(client, fetcher, app.engine.blobs, workspace_url, FileLocations(app.engine.store))
    finally:
        await fetcher.close()


class SlackAdapter(ChatSurface):
    platform = "slack"

    def __init__(self, app: Any, settings: Any, config: Any) -> None:
        self.app, self.settings, self.config = app, settings, config  # config: SlackSettings
        self.socket_mode = bool(config.app_token)
        if not self.socket_mode and not config.signing_secret:
            raise UserError("Slack HTTP mode needs SLACK_SIGNING_SECRET (or set SLACK_APP_TOKEN for Socket Mode).")
        self.client = _web_client(config)
        self.bolt = AsyncApp(client=self.client, signing_secret=config.signing_secret or "",
                             logger=logging.getLogger("slack_bolt"))
        self.fetcher = FileFetcher(config.bot_token, max_bytes=settings.max_image_bytes,
                                   max_pixels=settings.max_image_pixels, test_hosts=settings.test_file_hosts)
        self.dedupe = EventDedupe(settings)
        self.locations = FileLocations(app.engine.store)
        self.pacer = ChannelPacer(config.channel_interval)
        self.identity: dict[str, Any] = {}
        self._cache: dict[tuple[str, str], tuple[float, asyncio.Future]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._commands = {slash_name(spec.name, config.command_prefix): spec.name
                          for spec in slack_specs(app.pm)}
        self._stoppers: list[Any] = []
        self._warned_timestamp = False
        self._register()

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.identity = await _identity(self.client)
        sources = getattr(self.app, "history_sources", None)
        if sources is not None:
            sources[PLATFORM] = SlackHistory(self.client, self.fetcher, self.app.engine.blobs, self._workspace_url,
                                             self.locations)
        if self.socket_mode:
            await self._start_socket_mode()
        else:
            await self._start_http()
        # Long jobs that were running when the bot stopped: carry on in their threads (with Redis
        # down at start: once it is back; serving does not wait for it).
        self._spawn(self.resume_followed_jobs(spawn=self._spawn, unreachable=log.warning))

    async def _start_socket_mode(self) -> None:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        handler = AsyncSocketModeHandler(self.bolt, self.config.app_token, web_client=self.client)
        await handler.connect_async()
        self._stoppers.append(handler.close_async)
        log.info("Slack: connected as @%s to %s (Socket Mode)", self.identity.get("user"), self.identity.get("team"))

    async def _start_http(self) -> None:
        from aiohttp import web
        from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

        async def events(request: web.Request) -> web.Response:
            timestamp = request.headers.get("X-Slack-Request-Timestamp")
            if timestamp is not None and not _TIMESTAMP.fullmatch(timestamp):
                # bolt would int() it and answer 500 with a traceback, once per request: a log flood
                self._malformed_timestamp(timestamp)
                return web.json_response({"error": "invalid request"}, status=401)
            return await to_aiohttp_response(await self.bolt.async_dispatch(await to_bolt_request(request)))

        web_app = web.Application()
        web_app.add_routes([web.post(EVENTS_PATH, events)])
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        await site.start()
        self._stoppers.append(runner.cleanup)
        port = site._server.sockets[0].getsockname()[1]  # the real port when CLIPBOT_SLACK_PORT=0
        log.info("Slack: @%s for %s, HTTP mode listening on http://%s:%d%s", self.identity.get("user"),
                 self.identity.get("team"), self.config.host, port, EVENTS_PATH)

    def _malformed_timestamp(self, timestamp: str) -> None:
        if not self._warned_timestamp:  # one line, ever: who sends these can send many
            self._warned_timestamp = True
            log.warning("Slack: refused a request whose X-Slack-Request-Timestamp is not a number (%r); "
                        "later ones are refused without a log line", timestamp[:40])

    async def stop(self) -> None:
        for stop in reversed(self._stoppers):
            await stop()
        if self._tasks:  # give answers in flight a moment to land, then stop them
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
        await self.fetcher.close()
        await self.dedupe.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _workspace_url(self) -> str:
        return self.identity.get("url") or "https://slack.com/"

    # ---- bolt listeners --------------------------------------------------------------------------
    def _register(self) -> None:
        self.bolt.command(re.compile(r"^/"))(self._on_command)
        self.bolt.shortcut(re.compile(f"^{SHORTCUT_PREFIX}"))(self._on_shortcut)
        self.bolt.action(re.compile(f"^{re.escape(ACTION_PREFIX)}"))(self._on_action)
        self.bolt.view(FORM_CALLBACK)(self._on_form)
        self.bolt.event("app_mention")(self._on_mention)
        self.bolt.event("message")(self._on_message)
        self.bolt.event("file_deleted")(self._on_file_deleted)
        self.bolt.event("channel_left")(self._on_channel_left)
        self.bolt.event("group_left")(self._on_channel_left)

    async def _first_time(self, kind: str, body: dict) -> bool:
        """False for a command, shortcut or click already run (a replay): it is acked, not run again."""
        key = replay_key(kind, body)
        try:
            if await self.dedupe.claim(key, ttl=REPLAY_TTL):
                return True
        except Exception as exc:  # the store is down: answering beats refusing everyone
            log.warning("Slack: could not check %s for a replay (%s); running it", key, exc)
            return True
        log.info("Slack %s %s replayed: not run again", kind, key.split(":", 1)[1])
        return False

    async def _on_command(self, ack: Any, body: dict, respond: Any) -> None:
        await ack()
        if not await self._first_time("command", body):
            return
        target = Target(body["channel_id"], body["user_id"], body.get("thread_ts"), respond)
        name = self._commands.get(body.get("command", ""), body.get("command", "").lstrip("/"))
        self._spawn(self._guarded(target, self._run_text(
            name, body.get("text", ""), target, team=body.get("team_id", ""), user_name=body.get("user_name", ""),
            files=(), latest_fallback=True)))

    async def _on_shortcut(self, ack: Any, body: dict, respond: Any) -> None:
        await ack()
        if not await self._first_time("shortcut", body):
            return
        message = body.get("message") or {}
        channel = (body.get("channel") or {}).get("id", "")
        target = Target(channel, body["user"]["id"], message.get("thread_ts") or message.get("ts"), respond)
        name = body.get("callback_id", "")[len(SHORTCUT_PREFIX):]
        self._spawn(self._guarded(target, self._run_on_message(name, message, target, team=_team(body))))

    async def _on_action(self, ack: Any, body: dict, respond: Any) -> None:
        await ack()
        if not await self._first_time("action", body):
            return
        message = body.get("message") or {}
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id", "")
        target = Target(channel, body["user"]["id"], message.get("thread_ts"), respond)
        try:
            clicked = body["actions"][0]
            action = decode_action(clicked["value"], label=(clicked.get("text") or {}).get("text", ""))
        except (ValueError, KeyError, IndexError):
            action = None  # _run_action says so
        if action is not None and action.ask:  # a form first: views.open within the click's 3 s
            await self._open_form(action, body, channel, message, target)
            return
        self._spawn(self._guarded(target, self._run_action(action, body, message, target)))

    async def _open_form(self, action: Any, body: dict, channel: str, message: dict, target: Target) -> None:
        view = form_view(action, self.app.commands.get(action.command), channel=channel, message=message)
        try:
            await self.client.views_open(trigger_id=body.get("trigger_id", ""), view=view)
        except SlackApiError as exc:
            await self._say_privately(target, f"I could not open the form ({exc.response.get('error')}); "
                                              "click again.")

    async def _on_form(self, ack: Any, body: dict) -> None:
        """A submitted Remix form: the action it carries, with what was typed, from the submitter."""
        await ack()  # closes the modal
        if not await self._first_time("form", body):
            return
        try:
            action, answers, where = read_submission(body.get("view") or {})
        except ValueError:
            return  # not ours (no other view is registered under this callback id)
        message = {"ts": where.get("ts"), "thread_ts": where.get("thread_ts")}
        target = Target(where.get("channel", ""), body["user"]["id"], message["thread_ts"])
        self._spawn(self._guarded(target, self._run_action(dataclasses.replace(
            action, options=filled(action, answers), ask=()), body, message, target)))

    async def _on_mention(self, body: dict, event: dict) -> None:
        if not await self.dedupe.claim(body.get("event_id", "")):
            return
        words = _MENTION.sub(" ", event.get("text", "")).strip()
        name, _, text = words.partition(" ")
        thread = event.get("thread_ts")
        target = Target(event["channel"], event.get("user", ""), thread or event["ts"])
        if not name:
            name, text = "help", ""
        self._spawn(self._guarded(target, self._run_text(
            name.lstrip("/").lower(), text, target, team=body.get("team_id", ""), files=image_files(event),
            latest_fallback=thread is not None, thread=thread)))

    async def _on_message(self, body: dict, event: dict) -> None:
        if not await self.dedupe.claim(body.get("event_id", "")):
            log.info("Slack event %s already handled (retry %s)", body.get("event_id"), event.get("ts"))
            return
        team, channel, subtype = body.get("team_id", ""), event.get("channel", ""), event.get("subtype")
        if subtype == "message_deleted":
            await self.app.message_deleted(MessageDeleted(PLATFORM, team, channel, event.get("deleted_ts", "")))
        elif subtype == "message_changed":
            before = {f.get("id") for f in (event.get("previous_message") or {}).get("files") or ()}
            after = {f.get("id") for f in (event.get("message") or {}).get("files") or ()}
            message = event.get("message") or {}
            if before - after:  # files removed from a message (or it became a tombstone)
                await self.app.message_deleted(MessageDeleted(PLATFORM, team, channel, message.get("ts", ""),
                                                              source_ids=tuple(sorted(before - after))))
        elif subtype in (None, "file_share", "thread_broadcast") and image_files(event):
            posted = await image_posted(self.fetcher, self.app.engine.blobs, team=team, channel=channel,
                                        message=event, workspace_url=await self._workspace_url())
            if posted is not None:
                await self.locations.remember(posted)
                await self.app.image_posted(posted)

    async def _on_file_deleted(self, body: dict, event: dict) -> None:
        if not await self.dedupe.claim(body.get("event_id", "")):
            return
        # Slack names the file, not where it was posted: the places come from when it was indexed.
        team, file_id = body.get("team_id", ""), event.get("file_id", "")
        for channel, message_id in await self.locations.forget(team, file_id) or [("", "")]:
            await self.app.message_deleted(MessageDeleted(PLATFORM, team, channel, message_id, source_ids=(file_id,)))

    async def _on_channel_left(self, body: dict, event: dict) -> None:
        if await self.dedupe.claim(body.get("event_id", "")):
            await self.app.channel_removed(ChannelRemoved(PLATFORM, body.get("team_id", ""), event.get("channel", "")))

    # ---- from Slack to a Request -------------------------------------------------------------------
    async def _guarded(self, target: Target, work: Awaitable[None]) -> None:
        """Run one answer; a user mistake becomes a private one-line reply, a crash is logged."""
        try:
            await work
        except UserError as exc:
            await self._say_privately(target, str(exc))
        except Exception:
            ref = uuid.uuid4().hex[:8]  # the reply names it, the log line too: a user's report finds it
            log.exception("Slack request in %s failed (ref %s)", target.channel, ref, extra={"ref": ref})
            await self._say_privately(target, f"Something went wrong on my side (ref {ref}). It has been logged.")

    async def _say_privately(self, target: Target, text: str) -> None:
        poster = ReplyPoster(self.client, self.pacer, target, progress_interval=0)

        async def one() -> Any:
            yield error_reply(text)

        await poster.deliver(one())

    async def _run_text(self, name: str, text: str, target: Target, *, team: str, files: list[dict],
                        latest_fallback: bool, user_name: str = "", thread: str | None = None) -> None:
        spec = self.app.spec(name)
        # Pictures never come from the text on Slack, so words fill the text options only:
        # `/whatis cat, dog` means labels.
        text_only = dataclasses.replace(spec, options=tuple(o for o in spec.options if o.type is not Attachment))
        options: dict[str, Any] = parse_command_text(text_only, _unescape(text))
        await self._attach(spec, options, files, target.channel, thread or target.thread_ts, latest_fallback)
        await self._answer(spec, options, target, team=team, user_name=user_name, thread=thread)

    async def _run_on_message(self, name: str, message: dict, target: Target, *, team: str) -> None:
        spec = self.app.spec(name)
        files = image_files(message)
        if not files:
            raise UserError(f"That message has no picture for /{spec.name}.")
        options: dict[str, Any] = {}
        await self._attach(spec, options, files, target.channel, None, latest_fallback=False)
        await self._answer(spec, options, target, team=team, thread=message.get("thread_ts"))

    async def _run_action(self, action: Any, body: dict, message: dict, target: Target) -> None:
        if action is None:
            raise UserError("I can't read that button any more; run the command again.")
        spec = self.app.spec(action.command)
        if not spec.long_running:  # quick answers go under the clicked message
            target.thread_ts = message.get("thread_ts") or message.get("ts")
        clicked = {"channel": target.channel, "ts": message.get("ts", "")} if message.get("ts") else None
        await self._answer(spec, dict(action.options), target, team=_team(body), thread=message.get("thread_ts"),
                           clicked=clicked)

    async def _attach(self, spec: CommandSpec, options: dict[str, Any], files: list[dict], channel: str,
                      thread: str | None, latest_fallback: bool) -> None:
        """Fill image options from the message's files, else (when asked) the thread's latest picture."""
        files = list(files)
        for option in (o for o in spec.options if o.type is Attachment):
            if files and option.multiple:  # a list option (/blend's pictures) takes every file left
                options[option.name] = [await self.fetcher.attachment(self.app.engine.blobs, f) for f in files]
                files = []
            elif files:
                options[option.name] = await self.fetcher.attachment(self.app.engine.blobs, files.pop(0))
            elif options.get(option.name):
                raise UserError(f"On Slack, /{spec.name} can't take a file name: use the message shortcut on a "
                                "message with a picture, or mention me with the picture attached.")
            elif option.required and latest_fallback:
                file = await self._latest_image(channel, thread)
                options[option.name] = await self.fetcher.attachment(self.app.engine.blobs, file)

    async def _latest_image(self, channel: str, thread: str | None) -> dict:
        try:
            if thread:
                page = await self.client.conversations_replies(channel=channel, ts=thread, limit=200)
            else:
                page = await self.client.conversations_history(channel=channel, limit=50)
        except SlackApiError as exc:
            raise UserError(f"I can't read this conversation ({exc.response.get('error')}): invite me first "
                            "with /invite @clipbot.") from None
        messages = page.get("messages") or []
        newest_first = reversed(messages) if thread else messages  # replies come oldest first
        for message in newest_first:
            files = image_files(message)
            if files:
                return files[-1]
        where = "this thread" if thread else "the last messages here"
        raise UserError(f"I found no picture in {where}. Use the message shortcut \"What is this?\" on a "
                        "message with a picture, or mention me with a picture attached.")

    async def _answer(self, spec: CommandSpec, options: dict[str, Any], target: Target, *, team: str,
                      user_name: str = "", thread: str | None = None, clicked: dict | None = None) -> None:
        if spec.name not in self._commands.values():
            raise UserError(f"/{spec.name} is not available in Slack.")
        poster = ReplyPoster(self.client, self.pacer, target, progress_interval=self.config.progress_interval)
        conversation = {"platform": PLATFORM, "team": team, "channel": target.channel, "thread": target.thread_ts,
                        "user": target.user}
        if spec.long_running:
            # The requester is mentioned on purpose; what they typed is shown, never read as <!channel> etc.
            header = f"<@{target.user}> " + render_slack(f"/{spec.name}: {escape(_summary(options))}".rstrip(": "))

            async def open_parent() -> dict:  # at the first public reply: a refusal stays private
                if poster.parent_ts is None:
                    parent = await poster.open_parent(header)
                    conversation.update(message=parent, thread=poster.thread_ts, header=header)
                return conversation

            poster.opener = open_parent
        request = Request(command=spec.name, options=options, user_id=target.user, channel_id=target.channel,
                          platform=PLATFORM, is_admin=await self._is_admin(target.user), thread_id=thread,
                          space_id=team, readable_channels=await self._readable(target.user, target.channel),
                          user_name=user_name, conversation=conversation, open_conversation=poster.opener,
                          source_message=clicked, upload_limit=UPLOAD_LIMIT,
                          delete_source=functools.partial(self.delete_message, clicked) if clicked else None)
        await poster.deliver(self.app.handle(request))

    async def delete_message(self, message: dict) -> None:
        """Delete a message the bot posted (`chat.delete`), with the bot's own messages in its thread
        (a long job's snapshots and pictures). Slack lets a bot token delete only its own messages."""
        channel, ts = message["channel"], message["ts"]
        try:
            replies = (await self.client.conversations_replies(channel=channel, ts=ts, limit=200)).get("messages") or []
        except SlackApiError:
            replies = []  # no thread (or not readable): the message alone
        mine = self.identity.get("user_id")
        for reply in replies:
            if reply.get("ts") != ts and mine and reply.get("user") == mine:  # other bots: not ours to delete
                await self._delete(channel, reply)
        await self._delete(channel, next((r for r in replies if r.get("ts") == ts), message))

    async def _delete(self, channel: str, message: dict) -> None:
        """One bot message and the files the bot uploaded with it: on Slack a file outlives the message
        it was shared in (its permalink still opens it), so the files go first (`files.delete`)."""
        mine = self.identity.get("user_id")
        async with self.pacer.slot(channel):
            try:
                for shared in message.get("files") or ():
                    if shared.get("id") and (not shared.get("user") or shared.get("user") == mine):
                        await self._delete_file(shared["id"])
                await self.client.chat_delete(channel=channel, ts=message["ts"])
            except SlackApiError as exc:
                if exc.response.get("error") != "message_not_found":
                    raise UserError(f"Slack did not let me delete that message ({exc.response.get('error')}).") from None

    async def _delete_file(self, file_id: str) -> None:
        try:
            await self.client.files_delete(file=file_id)
        except SlackApiError as exc:
            if exc.response.get("error") != "file_not_found":  # already gone: what was asked
                raise

    async def deliver(self, conversation: dict, replies: Any) -> None:
        """Post a reply stream into a conversation stored earlier (`Request.conversation`), e.g. a
        long job's progress and result after the bot restarted: the parent message is edited on."""
        target = Target(conversation["channel"], conversation.get("user", ""), conversation.get("thread"))
        poster = ReplyPoster(self.client, self.pacer, target, progress_interval=self.config.progress_interval)
        if conversation.get("message"):
            poster.resume_parent(conversation["message"], conversation.get("header", ""))
        await poster.deliver(replies)

    # ---- who may do and see what -------------------------------------------------------------------
    async def _cached(self, kind: str, key: str, load: Any) -> Any:
        """`load()`'s value for a while; concurrent askers share one call (a burst of commands from
        one user makes one users.conversations walk, not fifty)."""
        hit = self._cache.get((kind, key))
        if hit and hit[0] > time.monotonic():
            return await asyncio.shield(hit[1])
        future = asyncio.ensure_future(load())
        self._cache[(kind, key)] = (time.monotonic() + CACHE_SECONDS, future)
        try:
            return await asyncio.shield(future)
        except Exception:
            self._cache.pop((kind, key), None)  # a failed look-up is not remembered
            raise

    async def _readable(self, user: str, channel: str) -> frozenset[str]:
        """Channels the user is a member of (they are reading `channel` right now)."""
        async def load() -> frozenset[str]:
            ids, cursor = set(), None
            while True:
                page = await self.client.users_conversations(user=user, cursor=cursor, limit=200, exclude_archived=True,
                                                             types="public_channel,private_channel,mpim,im")
                ids.update(c["id"] for c in page.get("channels") or ())
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    return frozenset(ids)

        return await self._cached("channels", user, load) | {channel}

    async def _is_admin(self, user: str) -> bool:
        if user in self.config.admins:
            return True

        async def load() -> bool:
            try:
                info = (await self.client.users_info(user=user)).get("user") or {}
            except SlackApiError:
                return False
            return bool(info.get("is_admin") or info.get("is_owner") or info.get("is_primary_owner"))

        return await self._cached("admin", user, load)


def _unescape(text: str) -> str:
    """Slack escapes &, < and > in message and command text."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _team(body: dict) -> str:
    return (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id", "")


def _summary(options: dict[str, Any]) -> str:
    first = ("prompt", "query")  # the words people typed lead; options follow
    items = sorted(options.items(), key=lambda kv: kv[0] not in first)
    shown = [f"{v}" if k in first else f"{k}: {v}" for k, v in items
             if v not in (None, "") and not isinstance(v, Attachment)]
    return " ".join(shown)[:300]
