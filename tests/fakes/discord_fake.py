"""A small fake of Discord (REST API v10 + gateway + attachment CDN) on 127.0.0.1, for the real discord.py client.

The bot under test points `discord.http.Route.BASE` at `api_base` and
`DiscordWebSocket.DEFAULT_GATEWAY` at `gateway_url`. The fake speaks the JSON shapes of the
Discord API docs: HELLO / IDENTIFY / READY / GUILD_CREATE / heartbeats on the gateway, and the
REST routes a bot uses (command sync, interaction callbacks, webhook follow-ups and edits with
multipart files, channel messages, threads, history). Every REST call is recorded in `calls`.

It enforces what real Discord enforces and a careless bot trips over: a 401 without the bot
token, 40060 when an interaction is acknowledged twice, 50027 on an expired interaction token,
4014 when privileged intents were not granted, and a per-channel edit rate limit answered with
429 and the `X-RateLimit-*` headers (so a test can assert the bot never caused one).

The server runs on its own event loop in a thread; the test-facing methods (`post_message`,
`slash`, `click`, `wait_for`, ...) are synchronous and thread-safe.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from aiohttp import WSMsgType, web

from tests.fakes.cdn import Served, send
from tests.support.polling import wait_until

DISCORD_EPOCH_MS = 1420070400000
BOT_TOKEN = "fake-bot-token"

# Permission bits (Discord API docs, "Permissions").
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MANAGE_MESSAGES = 1 << 13
MANAGE_THREADS = 1 << 34
EVERYONE_DEFAULT = VIEW_CHANNEL | SEND_MESSAGES | ATTACH_FILES | READ_MESSAGE_HISTORY | (1 << 6) | (1 << 38)
ALL_PERMISSIONS = (1 << 50) - 1

INTENT_GUILD_MEMBERS = 1 << 1
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | INTENT_MESSAGE_CONTENT
EPHEMERAL = 1 << 6


def _iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc).isoformat()


def _modal_problem(data: dict, interaction_type: int) -> str:
    """What Discord refuses in a MODAL callback: modals answer commands and components only
    (not another modal's submission); title <= 45, custom_id <= 100, 1-5 rows of one text input,
    labels <= 45, placeholders <= 100."""
    if interaction_type not in (2, 3):
        return "a modal answers a command or a component"
    rows = data.get("components") or []
    if not data.get("title") or len(data["title"]) > 45 or not data.get("custom_id") or len(data["custom_id"]) > 100:
        return "title or custom_id"
    if not 1 <= len(rows) <= 5:
        return "a modal has 1 to 5 rows"
    for row in rows:
        items = row.get("components") or []
        if row.get("type") != 1 or len(items) != 1 or items[0].get("type") != 4:
            return "each row holds one text input"
        item = items[0]
        if not item.get("label") or len(item["label"]) > 45 or len(item.get("placeholder") or "") > 100:
            return "text input label or placeholder"
    return ""


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    # Exactly "application/json": with aiohttp's "; charset=utf-8" suffix discord.py reads the body as text.
    return web.Response(status=status, body=json.dumps(obj).encode(),
                        headers={**(headers or {}), "Content-Type": "application/json"})


@dataclass
class Call:
    method: str
    path: str  # after /api/v10, e.g. "/channels/1/messages"
    query: dict[str, str]
    json: Any
    files: list[dict]  # [{"field", "filename", "content_type", "data"}]
    status: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class InteractionRecord:
    id: str
    token: str
    payload: dict
    channel_id: str
    responded: bool = False
    callback_type: int | None = None
    original_id: str | None = None
    ephemeral: bool = False
    expired: bool = False
    dispatched_at: float = field(default_factory=time.monotonic)
    modal: dict | None = None  # what a MODAL callback (type 9) showed the member


class FakeDiscord:
    def __init__(self, *, grant_message_content: bool = True, edit_limit: tuple[int, float] = (5, 5.0),
                 attachment_size_limit: int = 10 * 1024 * 1024) -> None:
        self.grant_message_content = grant_message_content
        self.edit_limit = edit_limit
        self.attachment_size_limit = attachment_size_limit
        self._counter = itertools.count(1)
        self.app_id = self.snowflake()
        self.bot_user = {"id": self.app_id, "username": "clipbot", "discriminator": "0", "global_name": "clipbot",
                         "avatar": None, "bot": True}
        self.calls: list[Call] = []
        self.guilds: dict[str, dict] = {}
        self.channels: dict[str, dict] = {}
        self.messages: dict[str, dict[str, dict]] = {}  # channel id -> message id -> message (insertion order)
        self.cdn: dict[str, Served] = {}  # path -> the file and how the CDN sends it
        self._cdn_files = itertools.count()
        self.thread_members: dict[str, set[str]] = {}  # thread id -> user ids
        self.commands: dict[str, list[dict]] = {}  # "global" or guild id -> synced commands
        self.interactions: dict[str, InteractionRecord] = {}
        self.identifies: list[dict] = []
        self.rate_limited: list[Call] = []
        self._sessions: list[dict] = []
        self._edits: dict[str, list[float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- life cycle ----------------------------------------------------------------------------
    def start(self) -> "FakeDiscord":
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-discord", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake Discord did not start")
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{tail:.*}", self._cdn)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            for session in list(self._sessions):
                await session["ws"].close()
            await self._runner.cleanup()  # type: ignore[union-attr]

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)  # type: ignore[union-attr]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def _sync(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the fake's loop (all state changes happen there) and return its result."""
        async def call() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)  # type: ignore[arg-type]

    def snowflake(self) -> str:
        return str(((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._counter) & 0x3FFFFF))

    # ---- the world: guilds, roles, channels, members -------------------------------------------
    def add_guild(self, name: str = "Test Guild", owner_id: str | None = None) -> str:
        gid = self.snowflake()
        everyone = {"id": gid, "name": "@everyone", "color": 0, "hoist": False, "position": 0,
                    "permissions": str(EVERYONE_DEFAULT), "managed": False, "mentionable": False, "flags": 0}
        self.guilds[gid] = {
            "id": gid, "name": name, "icon": None, "owner_id": owner_id or self.snowflake(), "roles": [everyone],
            "emojis": [], "stickers": [], "features": [], "member_count": 1, "members": [], "channels": [],
            "threads": [], "presences": [], "voice_states": [], "large": False, "unavailable": False,
            "joined_at": _iso(), "premium_tier": 0, "preferred_locale": "en-US", "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0,
            "system_channel_id": None, "afk_timeout": 300, "afk_channel_id": None,
            "premium_progress_bar_enabled": False, "_members": {},
        }
        self.add_member(gid, self.bot_user)
        return gid

    def add_role(self, guild_id: str, name: str, permissions: int) -> str:
        rid = self.snowflake()
        roles = self.guilds[guild_id]["roles"]
        roles.append({"id": rid, "name": name, "color": 0, "hoist": False, "position": len(roles),
                      "permissions": str(permissions), "managed": False, "mentionable": False, "flags": 0})
        return rid

    def add_channel(self, guild_id: str, name: str, *, overwrites: list[dict] | None = None, nsfw: bool = False) -> str:
        """A text channel. `overwrites`: [{"id", "type": 0 role | 1 member, "allow": int, "deny": int}];
        `nsfw`: age-restricted."""
        cid = self.snowflake()
        channel = {"id": cid, "type": 0, "guild_id": guild_id, "name": name,
                   "position": len(self.guilds[guild_id]["channels"]),
                   "permission_overwrites": [{"id": o["id"], "type": o["type"], "allow": str(o.get("allow", 0)),
                                              "deny": str(o.get("deny", 0))} for o in overwrites or []],
                   "parent_id": None, "nsfw": nsfw, "topic": None, "last_message_id": None,
                   "rate_limit_per_user": 0, "flags": 0}
        self.guilds[guild_id]["channels"].append(channel)
        self.channels[cid] = channel
        self.messages[cid] = {}
        return cid

    def add_member(self, guild_id: str, user: dict | str, roles: list[str] = ()) -> dict:
        """A member; `user` is a user object or a name. Returns the user object."""
        if isinstance(user, str):
            user = {"id": self.snowflake(), "username": user, "discriminator": "0", "global_name": user,
                    "avatar": None}
        self.guilds[guild_id]["_members"][user["id"]] = {
            "user": user, "roles": list(roles), "nick": None, "avatar": None, "joined_at": _iso(),
            "premium_since": None, "deaf": False, "mute": False, "flags": 0, "pending": False,
        }
        return user

    def permissions(self, guild_id: str, channel_id: str, user_id: str) -> int:
        """Discord's documented algorithm: base from roles, then @everyone, role and member overwrites."""
        guild = self.guilds[guild_id]
        member = guild["_members"][user_id]
        if guild["owner_id"] == user_id:
            return ALL_PERMISSIONS
        roles = {r["id"]: int(r["permissions"]) for r in guild["roles"]}
        perms = roles[guild_id]
        for rid in member["roles"]:
            perms |= roles.get(rid, 0)
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        channel = thread = self.channels[channel_id]
        if channel["type"] in (10, 11, 12):  # threads take their parent's permissions
            channel = self.channels[channel["parent_id"]]
        if thread["type"] == 12 and user_id not in self.thread_members.get(channel_id, ()):
            # a private thread: visible to its members and to those who may manage the parent's threads
            parent = self.permissions(guild_id, channel["id"], user_id)
            return parent if parent & MANAGE_THREADS else 0
        overwrites = {o["id"]: o for o in channel["permission_overwrites"]}
        if guild_id in overwrites:
            perms = (perms & ~int(overwrites[guild_id]["deny"])) | int(overwrites[guild_id]["allow"])
        allow = deny = 0
        for rid in member["roles"]:
            if rid in overwrites:
                allow |= int(overwrites[rid]["allow"])
                deny |= int(overwrites[rid]["deny"])
        perms = (perms & ~deny) | allow
        if user_id in overwrites:
            perms = (perms & ~int(overwrites[user_id]["deny"])) | int(overwrites[user_id]["allow"])
        return perms if perms & VIEW_CHANNEL else 0  # a channel you cannot see grants nothing

    def _guild_payload(self, gid: str) -> dict:
        guild = {k: v for k, v in self.guilds[gid].items() if not k.startswith("_")}
        guild["members"] = [self.guilds[gid]["_members"][self.app_id]]
        # "all active threads in the guild that the current user has permission to view"
        guild["threads"] = [c for c in self.channels.values() if c["guild_id"] == gid and c["type"] in (11, 12)
                            and self.permissions(gid, c["id"], self.app_id) & VIEW_CHANNEL]
        guild["member_count"] = len(self.guilds[gid]["_members"])
        return guild

    # ---- gateway ---------------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = {"ws": ws, "seq": 0, "identified": False, "intents": 0, "query": dict(request.query)}
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op = payload.get("op")
                if op == 1:  # ACK after a network-like delay: an instant ACK races discord.py's latency clock
                    asyncio.get_running_loop().call_later(
                        0.05, lambda: asyncio.ensure_future(ws.send_json({"op": 11, "d": None, "s": None, "t": None})))
                elif op == 2:
                    await self._identify(session, payload["d"])
                elif op == 6:  # RESUME: we keep no session state; ask for a fresh IDENTIFY
                    await ws.send_json({"op": 9, "d": False, "s": None, "t": None})
        finally:
            if session in self._sessions:
                self._sessions.remove(session)
        return ws

    async def _identify(self, session: dict, data: dict) -> None:
        ws = session["ws"]
        self.identifies.append(data)
        if data.get("token") != BOT_TOKEN:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED_INTENTS and not self.grant_message_content:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session.update(identified=True, intents=intents)
        self._sessions.append(session)
        ready = {"v": 10, "user": self.bot_user, "guilds": [{"id": g, "unavailable": True} for g in self.guilds],
                 "session_id": self.snowflake(), "resume_gateway_url": self.gateway_url, "shard": [0, 1],
                 "application": {"id": self.app_id, "flags": 0}, "private_channels": [], "relationships": []}
        await self._send(session, "READY", ready)
        for gid in self.guilds:
            await self._send(session, "GUILD_CREATE", self._guild_payload(gid))

    async def _send(self, session: dict, event: str, data: dict) -> None:
        session["seq"] += 1
        if not session["ws"].closed:
            await session["ws"].send_json({"op": 0, "t": event, "s": session["seq"], "d": data})

    async def _dispatch(self, event: str, data: dict) -> None:
        for session in list(self._sessions):
            if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE") and not session["intents"] & INTENT_MESSAGE_CONTENT:
                data = {**data, "content": "", "attachments": [], "embeds": [], "components": []}
            await self._send(session, event, data)

    def connected(self) -> int:
        """How many identified gateway sessions are open."""
        return self._sync(lambda: sum(1 for s in self._sessions if s["identified"] and not s["ws"].closed))

    # ---- what users do ---------------------------------------------------------------------------
    def post_message(self, channel_id: str, author: dict, content: str = "",
                     files: list[tuple[str, bytes, str]] = ()) -> dict:
        """A user posts a message (with files: (filename, bytes or `Served`, content type)); MESSAGE_CREATE
        goes out."""
        def post() -> Any:
            message = self._new_message(channel_id, author, {"content": content}, list(files))
            return self._dispatch_message(message)

        return self._sync(post)

    async def _dispatch_message(self, message: dict) -> dict:
        guild_id = self.channels[message["channel_id"]]["guild_id"]
        if not self.permissions(guild_id, message["channel_id"], self.app_id) & VIEW_CHANNEL:
            return message  # a private thread the bot is not in: it never hears of the message
        member = {k: v for k, v in self.guilds[guild_id]["_members"].get(message["author"]["id"], {}).items()
                  if k != "user"}
        await self._dispatch("MESSAGE_CREATE", {**message, "guild_id": guild_id, "member": member})
        return message

    def delete_message(self, channel_id: str, message_id: str) -> None:
        def delete() -> Any:
            self.messages[channel_id].pop(message_id, None)
            return self._dispatch("MESSAGE_DELETE", {"id": message_id, "channel_id": channel_id,
                                                     "guild_id": self.channels[channel_id]["guild_id"]})

        self._sync(delete)

    def bulk_delete(self, channel_id: str, message_ids: list[str]) -> None:
        def delete() -> Any:
            for mid in message_ids:
                self.messages[channel_id].pop(mid, None)
            return self._dispatch("MESSAGE_DELETE_BULK", {"ids": list(message_ids), "channel_id": channel_id,
                                                          "guild_id": self.channels[channel_id]["guild_id"]})

        self._sync(delete)

    def delete_channel(self, channel_id: str) -> None:
        def delete() -> Any:
            channel = self.channels.pop(channel_id)
            self.guilds[channel["guild_id"]]["channels"].remove(channel)
            return self._dispatch("CHANNEL_DELETE", channel)

        self._sync(delete)

    # ---- threads: public (11) and private (12), with members -----------------------------------------
    def add_thread(self, parent_id: str, name: str, owner: dict, *, private: bool = False,
                   members: list[dict] = (), bot_member: bool = True) -> str:
        """A member starts a thread in `parent_id`; `members` (and the owner, and the bot unless
        `bot_member=False`) join it. THREAD_CREATE goes to the bot if it may see the thread."""
        def create() -> Any:
            parent = self.channels[parent_id]
            tid = self.snowflake()
            self.channels[tid] = {
                "id": tid, "type": 12 if private else 11, "guild_id": parent["guild_id"], "parent_id": parent_id,
                "name": name, "owner_id": owner["id"], "message_count": 0, "member_count": 0,
                "rate_limit_per_user": 0, "flags": 0, "last_message_id": None,
                "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": _iso(),
                                    "locked": False, **({"invitable": False} if private else {})}}
            self.messages[tid] = {}
            joined = {owner["id"], *(m["id"] for m in members), *((self.app_id,) if bot_member else ())}
            self.thread_members[tid] = joined
            self.channels[tid]["member_count"] = len(joined)
            if self.permissions(parent["guild_id"], tid, self.app_id) & VIEW_CHANNEL:
                return self._dispatch_thread("THREAD_CREATE", tid, newly_created=True)
            return tid

        return self._sync(create)

    async def _dispatch_thread(self, event: str, tid: str, **extra: Any) -> str:
        thread = dict(self.channels[tid])
        if self.app_id in self.thread_members.get(tid, ()):
            thread["member"] = {"id": tid, "user_id": self.app_id, "join_timestamp": _iso(), "flags": 0}
        await self._dispatch(event, {**thread, **extra})
        return tid

    def remove_thread_member(self, thread_id: str, user_id: str) -> None:
        """Someone is removed from a thread. Without the members intent the bot hears of it only when
        it is the one removed (THREAD_MEMBERS_UPDATE)."""
        async def remove() -> None:
            thread = self.channels[thread_id]
            self.thread_members[thread_id].discard(user_id)
            thread["member_count"] = len(self.thread_members[thread_id])
            data = {"id": thread_id, "guild_id": thread["guild_id"], "member_count": thread["member_count"],
                    "removed_member_ids": [user_id]}
            for session in list(self._sessions):
                if user_id == self.app_id or session["intents"] & INTENT_GUILD_MEMBERS:
                    await self._send(session, "THREAD_MEMBERS_UPDATE", data)

        self._sync(remove)

    def delete_thread(self, thread_id: str) -> None:
        """A thread is deleted (with its messages; no MESSAGE_DELETE for them): THREAD_DELETE goes out."""
        def delete() -> Any:
            thread = self.channels.pop(thread_id)
            self.messages.pop(thread_id, None)
            self.thread_members.pop(thread_id, None)
            return self._dispatch("THREAD_DELETE", {"id": thread_id, "guild_id": thread["guild_id"],
                                                    "parent_id": thread["parent_id"], "type": thread["type"]})

        self._sync(delete)

    def update_overwrites(self, channel_id: str, overwrites: list[dict]) -> None:
        """Change a channel's permission overwrites (CHANNEL_UPDATE goes out)."""
        def update() -> Any:
            channel = self.channels[channel_id]
            channel["permission_overwrites"] = [{"id": o["id"], "type": o["type"], "allow": str(o.get("allow", 0)),
                                                 "deny": str(o.get("deny", 0))} for o in overwrites]
            return self._dispatch("CHANNEL_UPDATE", channel)

        self._sync(update)

    def slash(self, guild_id: str, channel_id: str, user: dict, name: str, options: dict[str, Any] | None = None,
              attachments: dict[str, tuple[str, bytes, str]] | None = None) -> InteractionRecord:
        """A member runs /name. `options`: name -> value; `attachments`: option -> (filename, bytes, type)."""
        def run() -> Any:
            command = self._command(guild_id, name, 1)
            types = {o["name"]: o["type"] for o in command.get("options", [])}
            opts = [{"name": k, "type": types[k], "value": v} for k, v in (options or {}).items()]
            resolved: dict = {}
            for opt_name, (filename, data, ctype) in (attachments or {}).items():
                att = self._attachment(channel_id, filename, data, ctype)
                resolved.setdefault("attachments", {})[att["id"]] = att
                opts.append({"name": opt_name, "type": 11, "value": att["id"]})
            data = {"id": command["id"], "name": name, "type": 1, "options": opts}
            if resolved:
                data["resolved"] = resolved
            return self._interact(guild_id, channel_id, user, 2, data)

        return self._sync(run)

    def context_menu(self, guild_id: str, channel_id: str, user: dict, name: str, message_id: str) -> InteractionRecord:
        def run() -> Any:
            command = self._command(guild_id, name, 3)
            message = self.messages[channel_id][message_id]
            data = {"id": command["id"], "name": name, "type": 3, "target_id": message_id,
                    "resolved": {"messages": {message_id: message}}}
            return self._interact(guild_id, channel_id, user, 2, data)

        return self._sync(run)

    def click(self, guild_id: str, channel_id: str, user: dict, message_id: str, custom_id: str) -> InteractionRecord:
        """A member clicks the button `custom_id` on a message the bot sent."""
        def run() -> Any:
            message = self.messages[channel_id][message_id]
            ids = [c.get("custom_id") for row in message.get("components", []) for c in row.get("components", [])]
            if custom_id not in ids:
                raise AssertionError(f"message {message_id} has no button {custom_id!r} (has {ids})")
            return self._interact(guild_id, channel_id, user, 3, {"custom_id": custom_id, "component_type": 2},
                                  message=message)

        return self._sync(run)

    def submit_modal(self, guild_id: str, channel_id: str, user: dict, opened: InteractionRecord,
                     values: dict[str, str]) -> InteractionRecord:
        """The member submits the modal that `opened` was answered with (type 5, MODAL_SUBMIT):
        `values` by text input custom_id; inputs not named keep what they were pre-filled with."""
        def run() -> Any:
            if opened.modal is None:
                raise AssertionError("that interaction was not answered with a modal")
            inputs = [c for row in opened.modal["components"] for c in row["components"]]
            unknown = set(values) - {c["custom_id"] for c in inputs}
            if unknown:
                raise AssertionError(f"the modal has no text input {sorted(unknown)}")
            rows = [{"type": 1, "components": [{"type": 4, "custom_id": c["custom_id"],
                                                "value": values.get(c["custom_id"], c.get("value", ""))}]}
                    for c in inputs]
            data = {"custom_id": opened.modal["custom_id"], "components": rows}
            return self._interact(guild_id, channel_id, user, 5, data, message=opened.payload.get("message"))

        return self._sync(run)

    def _command(self, guild_id: str, name: str, kind: int) -> dict:
        for command in self.commands.get(guild_id, []) + self.commands.get("global", []):
            if command["name"] == name and command.get("type", 1) == kind:
                return command
        raise AssertionError(f"no synced command {name!r} of type {kind}")

    async def _interact(self, guild_id: str, channel_id: str, user: dict, kind: int, data: dict,
                        message: dict | None = None) -> InteractionRecord:
        iid, token = self.snowflake(), f"itoken-{next(self._counter)}"
        member = {**self.guilds[guild_id]["_members"][user["id"]],
                  "permissions": str(self.permissions(guild_id, channel_id, user["id"]))}
        channel = self.channels[channel_id]
        payload = {"id": iid, "application_id": self.app_id, "type": kind, "data": data, "guild_id": guild_id,
                   "guild": {"id": guild_id, "locale": "en-US", "features": []},
                   "channel_id": channel_id, "channel": {k: v for k, v in channel.items()}, "member": member,
                   "token": token, "version": 1, "locale": "en-US", "guild_locale": "en-US",
                   "app_permissions": str(self.permissions(guild_id, channel_id, self.app_id)),
                   "entitlements": [], "authorizing_integration_owners": {"0": guild_id}, "context": 0,
                   "attachment_size_limit": self.attachment_size_limit}
        if message is not None:
            payload["message"] = message
        record = InteractionRecord(iid, token, payload, channel_id)
        self.interactions[token] = record
        await self._dispatch("INTERACTION_CREATE", payload)
        return record

    def expire_token(self, token: str) -> None:
        """From now on the interaction token answers 401 / 50027, as after Discord's 15 minutes."""
        self._sync(lambda: setattr(self.interactions[token], "expired", True))

    # ---- observing -------------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[["FakeDiscord"], Any], timeout: float = 60, what: str = "") -> Any:
        """Poll `predicate(self)` (on the fake's loop) until it returns something truthy."""
        return wait_until(lambda: self._sync(lambda: predicate(self)), timeout=timeout, what=what or str(predicate))

    def find_calls(self, method: str, pattern: str) -> list[Call]:
        regex = re.compile(pattern)
        return self._sync(lambda: [c for c in self.calls if c.method == method and regex.fullmatch(c.path)])

    def channel_messages(self, channel_id: str) -> list[dict]:
        return self._sync(lambda: list(self.messages.get(channel_id, {}).values()))

    def cdn_bytes(self, url: str) -> bytes:
        path = url.split("/attachments/", 1)[1].split("?", 1)[0]
        return self._sync(lambda: self.cdn[path].data)

    # ---- REST ------------------------------------------------------------------------------------
    _ROUTES: list[tuple[str, re.Pattern, str]] = [
        (m, re.compile(p), h) for m, p, h in [
            ("GET", r"/users/@me", "_r_me"),
            ("GET", r"/oauth2/applications/@me", "_r_app"),
            ("GET", r"/applications/(\d+)/commands", "_r_get_commands"),
            ("PUT", r"/applications/(\d+)/commands", "_r_put_commands"),
            ("GET", r"/applications/(\d+)/guilds/(\d+)/commands", "_r_get_commands"),
            ("PUT", r"/applications/(\d+)/guilds/(\d+)/commands", "_r_put_commands"),
            ("POST", r"/interactions/(\d+)/([^/]+)/callback", "_r_callback"),
            ("POST", r"/webhooks/(\d+)/([^/]+)", "_r_followup"),
            ("GET", r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "_r_webhook_get"),
            ("PATCH", r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "_r_webhook_edit"),
            ("DELETE", r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "_r_webhook_delete"),
            ("GET", r"/channels/(\d+)", "_r_channel"),
            ("GET", r"/channels/(\d+)/messages", "_r_history"),
            ("GET", r"/channels/(\d+)/messages/(\d+)", "_r_message"),
            ("POST", r"/channels/(\d+)/messages", "_r_send"),
            ("PATCH", r"/channels/(\d+)/messages/(\d+)", "_r_edit"),
            ("DELETE", r"/channels/(\d+)/messages/(\d+)", "_r_delete"),
            ("POST", r"/channels/(\d+)/threads", "_r_thread"),
            ("POST", r"/channels/(\d+)/messages/(\d+)/threads", "_r_thread"),
        ]
    ]

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body, files = await self._read_body(request)
        call = Call(request.method, path, dict(request.query), body, files)
        self.calls.append(call)
        for method, regex, handler in self._ROUTES:
            match = regex.fullmatch(path)
            if match and method == request.method:
                break
        else:
            return self._error(call, 404, 0, f"fake Discord has no route {request.method} {path}")
        if not path.startswith(("/webhooks/", "/interactions/")) and \
                request.headers.get("Authorization") != f"Bot {BOT_TOKEN}":
            return self._error(call, 401, 0, "401: Unauthorized")
        result = getattr(self, handler)(call, *match.groups())
        if asyncio.iscoroutine(result):  # a route that also dispatches a gateway event
            result = await result
        if isinstance(result, web.Response):
            return result
        call.status = 200 if result is not None else 204
        if result is None:
            return web.Response(status=204)
        return _json(result, headers=self._bucket_headers(path))

    async def _read_body(self, request: web.Request) -> tuple[Any, list[dict]]:
        if request.content_type.startswith("multipart/"):
            body: Any = None
            files = []
            reader = await request.multipart()
            async for part in reader:
                data = await part.read()
                if part.name == "payload_json":
                    body = json.loads(data)
                else:
                    files.append({"field": part.name, "filename": part.filename, "data": bytes(data),
                                  "content_type": part.headers.get("Content-Type", "application/octet-stream")})
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), []

    def _error(self, call: Call, status: int, code: int, message: str, headers: dict | None = None) -> web.Response:
        call.status = status
        return _json({"code": code, "message": message}, status, headers)

    def _bucket_headers(self, path: str) -> dict[str, str]:
        return {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "49", "X-RateLimit-Reset-After": "1.0",
                "X-RateLimit-Reset": f"{time.time() + 1:.3f}", "X-RateLimit-Bucket": "fake-" + path.split("/")[1]}

    def _edit_allowed(self, call: Call, channel_id: str) -> web.Response | None:
        """Message edits per bucket (a channel, or an interaction token): `edit_limit` = (count, seconds),
        answered with 429 beyond it."""
        count, window = self.edit_limit
        now = time.monotonic()
        recent = [t for t in self._edits.get(channel_id, []) if now - t < window]
        if len(recent) >= count:
            retry = window - (now - recent[0])
            self.rate_limited.append(call)
            body_headers = {"X-RateLimit-Limit": str(count), "X-RateLimit-Remaining": "0",
                            "X-RateLimit-Reset-After": f"{retry:.3f}", "X-RateLimit-Reset": f"{time.time() + retry:.3f}",
                            "X-RateLimit-Bucket": f"edit-{channel_id}", "Retry-After": f"{retry:.3f}",
                            "X-RateLimit-Scope": "user",
                            "Via": "1.1 google"}  # Discord's own 429s pass its proxy; discord.py treats others as bans
            call.status = 429
            return _json({"message": "You are being rate limited.", "retry_after": retry, "global": False},
                         429, body_headers)
        recent.append(now)
        self._edits[channel_id] = recent
        return None

    # routes
    def _r_me(self, call: Call) -> dict:
        return self.bot_user

    def _r_app(self, call: Call) -> dict:
        return {"id": self.app_id, "name": "clipbot", "icon": None, "description": "", "bot_public": True,
                "bot_require_code_grant": False, "owner": {**self.bot_user, "bot": False}, "verify_key": "0" * 64,
                "flags": 0, "team": None, "summary": "", "rpc_origins": [], "bot": self.bot_user}

    def _r_get_commands(self, call: Call, app_id: str, guild_id: str = "global") -> list:
        return self.commands.get(guild_id, [])

    def _r_put_commands(self, call: Call, app_id: str, guild_id: str = "global") -> list:
        stored = []
        for command in call.json:
            stored.append({"id": self.snowflake(), "application_id": app_id, "version": self.snowflake(),
                           "type": 1, "description": "", "options": [], "default_member_permissions": None,
                           "nsfw": False, **command, **({} if guild_id == "global" else {"guild_id": guild_id})})
        self.commands[guild_id] = stored
        return stored

    def _r_callback(self, call: Call, iid: str, token: str) -> Any:
        record = self.interactions.get(token)
        if record is None or record.id != iid:
            return self._error(call, 404, 10062, "Unknown interaction")
        if record.responded:
            return self._error(call, 400, 40060, "Interaction has already been acknowledged.")
        data = call.json.get("data") or {}
        if call.json["type"] == 9:
            problem = _modal_problem(data, record.payload["type"])
            if problem:
                return self._error(call, 400, 50035, f"Invalid Form Body ({problem})")
            record.modal = data
        record.responded, record.callback_type = True, call.json["type"]
        record.ephemeral = bool(int(data.get("flags", 0)) & EPHEMERAL)
        resource: dict = {"type": record.callback_type}
        if record.callback_type in (4, 5):  # a message (or its "thinking..." placeholder) is created
            message = self._new_message(record.channel_id, self.bot_user,
                                        data if record.callback_type == 4 else {"content": "", "flags": data.get("flags", 0) | 128},
                                        call.files, interaction=record)
            record.original_id = message["id"]
            resource["message"] = message
        elif record.callback_type == 7:  # update the message the component was on
            target = record.payload["message"]
            resource["message"] = self._apply_edit(self.messages[record.channel_id][target["id"]], data, call.files)
        interaction = {"id": iid, "type": record.payload["type"], "response_message_id": record.original_id,
                       "response_message_loading": record.callback_type == 5,
                       "response_message_ephemeral": record.ephemeral}
        return {"interaction": interaction, "resource": resource} if call.query.get("with_response") else None

    def _webhook_record(self, call: Call, token: str) -> InteractionRecord | web.Response:
        record = self.interactions.get(token)
        if record is None:
            return self._error(call, 404, 10015, "Unknown Webhook")
        if record.expired:
            return self._error(call, 401, 50027, "Invalid Webhook Token")
        return record

    def _r_followup(self, call: Call, app_id: str, token: str) -> Any:
        record = self._webhook_record(call, token)
        if isinstance(record, web.Response):
            return record
        if not record.responded:
            return self._error(call, 400, 10062, "Unknown interaction")
        channel_id = call.query.get("thread_id", record.channel_id)
        return self._new_message(channel_id, self.bot_user, call.json or {}, call.files, interaction=record)

    def _webhook_target(self, call: Call, token: str, mid: str) -> tuple[InteractionRecord, dict] | web.Response:
        record = self._webhook_record(call, token)
        if isinstance(record, web.Response):
            return record
        mid = record.original_id if mid == "@original" else mid
        channel_id = call.query.get("thread_id", record.channel_id)
        message = self.messages.get(channel_id, {}).get(mid or "")
        if message is None:
            return self._error(call, 404, 10008, "Unknown Message")
        return record, message

    def _r_webhook_get(self, call: Call, app_id: str, token: str, mid: str) -> Any:
        found = self._webhook_target(call, token, mid)
        return found if isinstance(found, web.Response) else found[1]

    def _r_webhook_edit(self, call: Call, app_id: str, token: str, mid: str) -> Any:
        found = self._webhook_target(call, token, mid)
        if isinstance(found, web.Response):
            return found
        limited = self._edit_allowed(call, "token:" + token)  # interaction webhooks: a bucket per token
        return limited or self._apply_edit(found[1], call.json or {}, call.files)

    def _r_webhook_delete(self, call: Call, app_id: str, token: str, mid: str) -> Any:
        found = self._webhook_target(call, token, mid)
        if isinstance(found, web.Response):
            return found
        self.messages[found[1]["channel_id"]].pop(found[1]["id"], None)
        return None

    def _r_channel(self, call: Call, cid: str) -> Any:
        channel = self.channels.get(cid)
        if channel is None:
            return self._error(call, 404, 10003, "Unknown Channel")
        if not self.permissions(channel["guild_id"], cid, self.app_id) & VIEW_CHANNEL:
            return self._error(call, 403, 50001, "Missing Access")
        return channel

    def _r_history(self, call: Call, cid: str) -> Any:
        if cid not in self.channels:
            return self._error(call, 404, 10003, "Unknown Channel")
        limit = min(int(call.query.get("limit", 50)), 100)
        messages = sorted(self.messages[cid].values(), key=lambda m: int(m["id"]), reverse=True)
        if "before" in call.query:
            messages = [m for m in messages if int(m["id"]) < int(call.query["before"])]
        if "after" in call.query:
            messages = [m for m in messages if int(m["id"]) > int(call.query["after"])][::-1]
        return messages[:limit]

    def _r_message(self, call: Call, cid: str, mid: str) -> Any:
        return self.messages.get(cid, {}).get(mid) or self._error(call, 404, 10008, "Unknown Message")

    def _r_send(self, call: Call, cid: str) -> Any:
        if cid not in self.channels:
            return self._error(call, 404, 10003, "Unknown Channel")
        return self._new_message(cid, self.bot_user, call.json or {}, call.files)

    def _r_edit(self, call: Call, cid: str, mid: str) -> Any:
        message = self.messages.get(cid, {}).get(mid)
        if message is None:
            return self._error(call, 404, 10008, "Unknown Message")
        return self._edit_allowed(call, cid) or self._apply_edit(message, call.json or {}, call.files)

    async def _r_delete(self, call: Call, cid: str, mid: str) -> Any:
        """Discord's rule: the bot deletes its own messages; anyone else's needs Manage Messages."""
        message = self.messages.get(cid, {}).get(mid)
        if message is None:
            return self._error(call, 404, 10008, "Unknown Message")
        guild_id = self.channels[cid]["guild_id"]
        if message["author"]["id"] != self.app_id and not self.permissions(guild_id, cid, self.app_id) & MANAGE_MESSAGES:
            return self._error(call, 403, 50013, "Missing Permissions")
        self.messages[cid].pop(mid, None)
        await self._dispatch("MESSAGE_DELETE", {"id": mid, "channel_id": cid, "guild_id": guild_id})
        return None

    def _r_thread(self, call: Call, cid: str, mid: str | None = None) -> Any:
        parent = self.channels.get(cid)
        if parent is None:
            return self._error(call, 404, 10003, "Unknown Channel")
        tid = mid or self.snowflake()
        thread = {"id": tid, "type": int((call.json or {}).get("type", 11)), "guild_id": parent["guild_id"],
                  "parent_id": cid, "name": call.json["name"], "owner_id": self.app_id, "message_count": 0,
                  "member_count": 1, "rate_limit_per_user": 0, "flags": 0, "last_message_id": None,
                  "thread_metadata": {"archived": False, "auto_archive_duration": int(
                      call.json.get("auto_archive_duration", 1440)), "archive_timestamp": _iso(), "locked": False}}
        self.channels[tid] = thread
        self.messages[tid] = {}
        self.thread_members[tid] = {self.app_id}
        asyncio.ensure_future(self._dispatch("THREAD_CREATE", {**thread, "newly_created": True}))
        return thread

    # ---- messages and attachments ------------------------------------------------------------------
    def _attachment(self, channel_id: str, filename: str, data: bytes | Served, content_type: str) -> dict:
        """`data`: the bytes (served CDN-like: small pieces with pauses), or a `Served` saying how."""
        # Every other file goes out chunked, without a Content-Length, as CDNs do now and then.
        served = data if isinstance(data, Served) else Served(data, content_type,
                                                              content_length=next(self._cdn_files) % 2 == 0)
        aid = self.snowflake()
        path = f"{channel_id}/{aid}/{filename}"
        self.cdn[path] = served
        url = f"{self.base_url}/attachments/{path}?ex=0&is=0&hm=fake"
        att = {"id": aid, "filename": filename, "size": served.declared, "url": url, "proxy_url": url,
               "content_type": content_type}
        try:
            from io import BytesIO

            from PIL import Image

            with Image.open(BytesIO(served.data)) as im:
                att["width"], att["height"] = im.size
        except Exception:  # not an image: Discord leaves width/height out
            pass
        return att

    def _files_to_attachments(self, channel_id: str, payload: dict, files: list[dict]) -> list[dict]:
        described = {str(a.get("id")): a for a in payload.get("attachments", []) or []}
        out = []
        for f in files:
            index = f["field"].removeprefix("files[").rstrip("]")
            name = described.get(index, {}).get("filename") or f["filename"]
            att = self._attachment(channel_id, name, f["data"], f["content_type"])
            if described.get(index, {}).get("description"):
                att["description"] = described[index]["description"]
            out.append(att)
        return out

    def _new_message(self, channel_id: str, author: dict, payload: dict, files: list,
                     interaction: InteractionRecord | None = None) -> dict:
        if files and not isinstance(files[0], dict):  # (filename, bytes, type) from post_message
            files = [{"field": f"files[{i}]", "filename": n, "data": d, "content_type": t}
                     for i, (n, d, t) in enumerate(files)]
        mid = self.snowflake()
        message = {"id": mid, "channel_id": channel_id, "author": author, "content": payload.get("content") or "",
                   "timestamp": _iso(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
                   "mentions": [], "mention_roles": [], "attachments": self._files_to_attachments(channel_id, payload, files),
                   "embeds": payload.get("embeds") or [], "pinned": False, "type": 0 if interaction is None else 20,
                   "flags": int(payload.get("flags", 0) or 0), "components": payload.get("components") or []}
        if interaction is not None:
            message["webhook_id"] = self.app_id
            message["interaction_metadata"] = {"id": interaction.id, "type": interaction.payload["type"],
                                               "user": interaction.payload["member"]["user"],
                                               "authorizing_integration_owners": {}}
        self.messages.setdefault(channel_id, {})[mid] = message
        if channel_id in self.channels:
            self.channels[channel_id]["last_message_id"] = mid
        return message

    def _apply_edit(self, message: dict, payload: dict, files: list[dict]) -> dict:
        for key in ("content", "embeds", "components", "flags"):
            if key in payload and payload[key] is not None:
                message[key] = payload[key]
        if "attachments" in payload or files:
            # Existing attachments to keep are listed by their snowflake; new files by their upload index.
            keep = {str(a.get("id")) for a in payload.get("attachments") or []}
            kept = [a for a in message["attachments"] if a["id"] in keep]
            message["attachments"] = kept + self._files_to_attachments(message["channel_id"], payload, files)
        message["flags"] = int(message.get("flags", 0)) & ~128  # no longer "thinking"
        message["edited_timestamp"] = _iso()
        return message

    async def _cdn(self, request: web.Request) -> web.Response:
        self.calls.append(Call("GET", "/attachments/" + request.match_info["tail"], dict(request.query), None, [],
                               200 if request.match_info["tail"] in self.cdn else 404))
        found = self.cdn.get(request.match_info["tail"])
        if found is None:
            return web.Response(status=404, text="not found")
        return await send(request, found)
