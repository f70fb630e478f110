"""A fake Slack on 127.0.0.1 that the real slack_sdk / slack-bolt clients talk to.

It serves the Web API methods clipbot uses (`base_url` override: `CLIPBOT_SLACK_API_URL`), the
external-upload URL of the `files_upload_v2` flow, `url_private` downloads (an HTML login page
without the bot token, as Slack does), and a Socket Mode websocket (`apps.connections.open`).
Every Web API call is recorded. It runs its own event loop in a thread so that synchronous tests
can drive a `clipbot run` subprocess; the helpers below are thread-safe.

Payload builders (`event_callback`, `slash_command`, `block_actions`, `message_shortcut`) and
`signed_headers` produce what Slack sends to an app, so tests speak Slack's wire format.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSMsgType, web

from tests.fakes.cdn import Served, send
from tests.support.polling import wait_until

LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.time)


class FakeSlack:
    def __init__(self, *, bot_token: str = "xoxb-fake-bot-token", app_token: str = "xapp-fake-app-token",
                 team_id: str = "T0FAKE", bot_user_id: str = "UBOT", host: str = "127.0.0.1") -> None:
        self.bot_token, self.app_token, self.team_id, self.bot_user_id = bot_token, app_token, team_id, bot_user_id
        self.host = host
        self.calls: list[Call] = []
        self.messages: dict[str, list[dict]] = {}  # channel -> messages, oldest first (replies included)
        self.views: list[dict] = []  # modals opened with views.open
        self.ephemerals: list[dict] = []
        self.members: dict[str, set[str]] = {}  # user -> channels
        self.kinds: dict[str, str] = {}  # channel -> public_channel (default), private_channel, mpim or im
        self.users: dict[str, dict] = {}
        self.files: dict[str, dict] = {}
        self.file_data: dict[str, bytes] = {}
        self.served: dict[str, Served] = {}  # file id -> how url_private sends it (files users posted)
        self._served_files = itertools.count()
        self.downloads: list[tuple[str, bool]] = []  # (file id, authorised)
        self.acks: dict[str, dict] = {}
        self.socket_connections = 0
        self._since = 0  # calls_to/wait_call look at calls after the last mark()
        self._rate_limits: dict[str, list[int]] = {}  # method -> [calls left to refuse, retry-after]
        self._lock = threading.RLock()
        self._ts = itertools.count(1)
        self._ws: web.WebSocketResponse | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def file_host(self) -> str:
        """CLIPBOT_TEST_FILE_HOSTS for this fake's `url_private` files (the API URL alone does not trust them)."""
        return f"{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """The Web API base for slack_sdk's `base_url` (ends with a slash)."""
        return f"{self.base}/api/"

    def start(self) -> "FakeSlack":
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._serve, args=(ready,), name="fake-slack", daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("fake Slack did not start")
        return self

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([
            web.post("/api/{method}", self._api), web.get("/api/{method}", self._api),
            web.post("/upload/{file_id}", self._upload),
            web.get("/files-pri/{file_id}/{name}", self._download),
            web.get("/redirect", self._redirect),
            web.get("/socket", self._socket),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._ws is not None:
                await self._ws.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- workspace state (test side) -------------------------------------------------------
    def next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def add_user(self, user_id: str, channels: list[str] = (), *, admin: bool = False, name: str = "") -> None:
        with self._lock:
            self.users[user_id] = {"id": user_id, "name": name or user_id.lower(), "team_id": self.team_id,
                                   "is_admin": admin, "is_owner": False, "is_bot": False}
            self.members[user_id] = set(channels)
            for channel in channels:
                self.messages.setdefault(channel, [])

    def add_conversation(self, channel: str, kind: str, members: list[str]) -> None:
        """A private channel (G...), group DM (mpim) or DM (im) with these members; the bot is in it."""
        assert kind in ("public_channel", "private_channel", "mpim", "im")
        with self._lock:
            self.kinds[channel] = kind
            self.messages.setdefault(channel, [])
            for user in members:
                self.members.setdefault(user, set()).add(channel)

    def add_file(self, data: bytes | Served, name: str = "photo.png", mimetype: str = "image/png",
                 user: str = "") -> dict:
        """A file in the workspace; `data` is its bytes (served CDN-like: small pieces with pauses,
        every other file without a Content-Length) or a `Served` saying how it goes out."""
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        served = data if isinstance(data, Served) else Served(data, mimetype,
                                                              content_length=next(self._served_files) % 2 == 0)
        info = {
            "id": file_id, "name": name, "title": name, "mimetype": mimetype, "filetype": name.rsplit(".", 1)[-1],
            "size": served.declared, "user": user, "url_private": f"{self.base}/files-pri/{file_id}/{name}",
            "url_private_download": f"{self.base}/files-pri/{file_id}/{name}",
            "permalink": f"https://fake.slack.com/files/{user}/{file_id}/{name}",
        }
        with self._lock:
            self.files[file_id] = info
            self.file_data[file_id] = served.data
            self.served[file_id] = served
        return info

    def post_as_user(self, channel: str, user: str, text: str = "", *, files: list[dict] = (),
                     thread_ts: str | None = None) -> dict:
        """A user's message as Slack stores it (the test then sends the matching event)."""
        message = {"type": "message", "user": user, "text": text, "ts": self.next_ts(), "team": self.team_id}
        if files:
            message["files"] = [dict(f) for f in files]
            message["upload"] = True
        if thread_ts:
            message["thread_ts"] = thread_ts
        with self._lock:
            self.messages.setdefault(channel, []).append(message)
        return message

    def delete_message(self, channel: str, ts: str) -> dict:
        with self._lock:
            message = next(m for m in self.messages[channel] if m["ts"] == ts)
            self.messages[channel].remove(message)
        return message

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next `times` calls of `method` with HTTP 429 and Retry-After."""
        with self._lock:
            self._rate_limits[method] = [times, retry_after]

    # ---- inspection ------------------------------------------------------------------------
    def mark(self) -> None:
        """From now on, `calls_to` and `wait_call` only see calls made after this point."""
        with self._lock:
            self._since = len(self.calls)

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls[self._since:] if c.method == method]

    def bot_messages(self, channel: str) -> list[dict]:
        with self._lock:
            return [dict(m) for m in self.messages.get(channel, []) if m.get("user") == self.bot_user_id]

    def thread(self, channel: str, ts: str) -> list[dict]:
        with self._lock:
            return [dict(m) for m in self.messages.get(channel, []) if m["ts"] == ts or m.get("thread_ts") == ts]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
        return wait_until(predicate, timeout=timeout, what=f"{what} (fake Slack)",
                          detail=lambda: f"calls: {[c.method for c in self.calls][-30:]}")

    def wait_call(self, method: str, predicate: Callable[[Call], bool] = lambda c: True,
                  timeout: float = 30) -> Call:
        return self.wait_for(lambda: next((c for c in self.calls_to(method) if predicate(c)), None),
                             timeout, what=method)

    # ---- Web API ---------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(dict(parse_qsl((await request.read()).decode(), keep_blank_values=True)))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or params.get("token")
        with self._lock:
            self.calls.append(Call(method, params))
            limit = self._rate_limits.get(method)
            if limit and limit[0] > 0:
                limit[0] -= 1
                return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                         headers={"Retry-After": str(limit[1])})
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        with self._lock:
            result = handler(params)
        return web.json_response({"ok": True, **result} if "error" not in result else {"ok": False, **result})

    def _m_views_open(self, p: dict) -> dict:
        """A modal, as Slack checks it: a trigger, a modal view with a title (<= 24), a callback id,
        private_metadata <= 3000 and 1-100 blocks. Opened views are kept in `views`."""
        view = _json(p.get("view") or {})
        if not p.get("trigger_id"):
            return {"error": "invalid_trigger_id"}
        title = (view.get("title") or {}).get("text", "")
        if (view.get("type") != "modal" or not 0 < len(title) <= 24 or not view.get("callback_id")
                or len(view.get("private_metadata") or "") > 3000 or not 1 <= len(view.get("blocks") or []) <= 100):
            return {"error": "invalid_arguments"}
        opened = {**view, "id": "V" + uuid.uuid4().hex[:10].upper(), "team_id": self.team_id}
        self.views.append(opened)
        return {"view": opened}

    def _m_auth_test(self, p: dict) -> dict:
        return {"url": "https://fake.slack.com/", "team": "Fake Team", "user": "clipbot", "team_id": self.team_id,
                "user_id": self.bot_user_id, "bot_id": "BFAKE", "is_enterprise_install": False}

    def _bot_message(self, p: dict, **extra: Any) -> dict:
        message = {"type": "message", "user": self.bot_user_id, "bot_id": "BFAKE", "ts": self.next_ts(),
                   "text": p.get("text", ""), "team": self.team_id, **extra}
        if p.get("blocks"):
            message["blocks"] = _json(p["blocks"])
        if p.get("thread_ts"):
            message["thread_ts"] = p["thread_ts"]
        return message

    def _m_chat_postMessage(self, p: dict) -> dict:
        channel = p.get("channel", "")
        if channel not in self.messages:
            return {"error": "channel_not_found"}
        message = self._bot_message(p)
        self.messages[channel].append(message)
        return {"channel": channel, "ts": message["ts"], "message": message}

    def _m_chat_update(self, p: dict) -> dict:
        message = self._find(p.get("channel", ""), p.get("ts", ""))
        if message is None:
            return {"error": "message_not_found"}
        message["text"] = p.get("text", message.get("text", ""))
        if "blocks" in p:
            message["blocks"] = _json(p["blocks"]) if p["blocks"] else []
        message["edited"] = {"user": self.bot_user_id, "ts": self.next_ts()}
        return {"channel": p["channel"], "ts": p["ts"], "text": message["text"]}

    def _m_chat_delete(self, p: dict) -> dict:
        message = self._find(p.get("channel", ""), p.get("ts", ""))
        if message is None:
            return {"error": "message_not_found"}
        if message.get("user") != self.bot_user_id:  # a bot token deletes only the bot's own messages
            return {"error": "cant_delete_message"}
        self.messages[p["channel"]].remove(message)
        return {"channel": p["channel"], "ts": p["ts"]}

    def _m_chat_postEphemeral(self, p: dict) -> dict:
        if p.get("channel") not in self.messages:
            return {"error": "channel_not_found"}
        message = self._bot_message(p, ephemeral_to=p.get("user"), channel=p.get("channel"))
        self.ephemerals.append(message)
        return {"message_ts": message["ts"]}

    def _m_files_getUploadURLExternal(self, p: dict) -> dict:
        if not p.get("filename") or not str(p.get("length", "")).isdigit():
            return {"error": "invalid_arguments"}
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self.files[file_id] = {"id": file_id, "name": p["filename"], "title": p["filename"], "size": int(p["length"]),
                               "pending": True}
        return {"upload_url": f"{self.base}/upload/{file_id}", "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        data = await request.read()
        with self._lock:
            self.calls.append(Call("upload", {"file_id": file_id, "length": len(data)}))
            if file_id not in self.files:
                return web.Response(status=404, text="unknown upload")
            self.file_data[file_id] = data
        return web.Response(text=f"OK - {len(data)}")

    def _m_files_completeUploadExternal(self, p: dict) -> dict:
        done = []
        for item in _json(p.get("files", "[]")):
            info = self.files.get(item.get("id"))
            if info is None or item["id"] not in self.file_data:
                return {"error": "file_not_found"}
            name = info["name"]
            info.update(pending=False, title=item.get("title") or name, mimetype=_mimetype(name), user=self.bot_user_id,
                        url_private=f"{self.base}/files-pri/{info['id']}/{name}",
                        permalink=f"https://fake.slack.com/files/{self.bot_user_id}/{info['id']}/{name}")
            done.append(dict(info))
        channel = p.get("channel_id")
        if channel:
            if channel not in self.messages:
                return {"error": "channel_not_found"}
            message = self._bot_message({"text": p.get("initial_comment", ""), "thread_ts": p.get("thread_ts")},
                                        files=done, upload=True)
            self.messages[channel].append(message)
        return {"files": [{"id": f["id"], "title": f["title"]} for f in done]}

    def _m_files_delete(self, p: dict) -> dict:
        """Slack's `files.delete`: a bot token deletes only files the bot uploaded; the file's URLs
        stop working and the messages that shared it no longer list it."""
        info = self.files.get(p.get("file", ""))
        if info is None:
            return {"error": "file_not_found"}
        if info.get("user") != self.bot_user_id:
            return {"error": "cant_delete_file"}
        del self.files[info["id"]]
        self.file_data.pop(info["id"], None)
        for messages in self.messages.values():
            for message in messages:
                if message.get("files"):
                    message["files"] = [f for f in message["files"] if f.get("id") != info["id"]]
        return {}

    def _m_files_info(self, p: dict) -> dict:
        info = self.files.get(p.get("file", ""))
        return {"file": dict(info)} if info else {"error": "file_not_found"}

    def _m_conversations_history(self, p: dict) -> dict:
        channel = p.get("channel", "")
        if channel not in self.messages:
            return {"error": "channel_not_found"}
        top = [m for m in reversed(self.messages[channel]) if m.get("thread_ts") in (None, m["ts"])]
        return self._page(top, p, "messages")

    def _m_conversations_replies(self, p: dict) -> dict:
        channel, ts = p.get("channel", ""), p.get("ts", "")
        if channel not in self.messages:
            return {"error": "channel_not_found"}
        thread = [m for m in self.messages[channel] if m["ts"] == ts or m.get("thread_ts") == ts]
        if not thread:
            return {"error": "thread_not_found"}
        return self._page(thread, p, "messages")

    def _m_users_conversations(self, p: dict) -> dict:
        # as Slack: `types` defaults to public_channel; another user's non-public conversations are
        # listed only where the bot shares membership (it is in every conversation the fake holds)
        user = p.get("user") or self.bot_user_id
        types = set((p.get("types") or "public_channel").split(","))
        channels = sorted(self.members.get(user, ())) if user != self.bot_user_id else sorted(self.messages)
        channels = [c for c in channels if self.kinds.get(c, "public_channel") in types]
        return self._page([{"id": c, "name": c.lower(), "is_member": True, "is_private": self.kinds.get(c) is not None
                            and self.kinds[c] != "public_channel", "is_mpim": self.kinds.get(c) == "mpim",
                            "is_im": self.kinds.get(c) == "im"} for c in channels], p, "channels")

    def _m_users_info(self, p: dict) -> dict:
        user = self.users.get(p.get("user", ""))
        return {"user": dict(user)} if user else {"error": "user_not_found"}

    def _m_apps_connections_open(self, p: dict) -> dict:
        return {"url": f"ws://{self.host}:{self.port}/socket"}

    def _find(self, channel: str, ts: str) -> dict | None:
        return next((m for m in self.messages.get(channel, []) if m["ts"] == ts), None)

    @staticmethod
    def _page(items: list, p: dict, key: str) -> dict:
        start = int(p.get("cursor") or 0)
        limit = int(p.get("limit") or 100)
        chunk = [dict(i) for i in items[start:start + limit]]
        more = start + limit < len(items)
        return {key: chunk, "has_more": more, "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    # ---- url_private -----------------------------------------------------------------------
    async def _download(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        authorised = request.headers.get("Authorization", "") == f"Bearer {self.bot_token}"
        with self._lock:
            self.downloads.append((file_id, authorised))
            data, info, served = self.file_data.get(file_id), self.files.get(file_id), self.served.get(file_id)
        if not authorised:  # what Slack does without a token (or without files:read)
            return web.Response(body=LOGIN_PAGE, content_type="text/html")
        if data is None:
            return web.Response(status=404, text="file not found")
        return await send(request, served or Served(data, info.get("mimetype", "application/octet-stream")))

    async def _redirect(self, request: web.Request) -> web.Response:
        """A 302 to `?to=URL` (Slack's file URLs may redirect; tests check where the token goes)."""
        with self._lock:
            self.calls.append(Call("redirect", {"to": request.query["to"],
                                                "authorization": request.headers.get("Authorization", "")}))
        raise web.HTTPFound(request.query["to"])

    # ---- Socket Mode -----------------------------------------------------------------------
    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        self.socket_connections += 1
        await ws.send_json({"type": "hello", "num_connections": 1,
                            "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                            "connection_info": {"app_id": "AFAKE"}})
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                if "envelope_id" in data:
                    with self._lock:
                        self.acks[data["envelope_id"]] = data
        if self._ws is ws:
            self._ws = None
        return ws

    @property
    def socket_connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def socket_send(self, kind: str, payload: dict, *, retry_attempt: int = 0) -> str:
        """Send one envelope (events_api, slash_commands, interactive); returns its envelope id."""
        envelope_id = str(uuid.uuid4())
        envelope = {"envelope_id": envelope_id, "type": kind, "payload": payload,
                    "accepts_response_payload": kind != "events_api", "retry_attempt": retry_attempt,
                    "retry_reason": "timeout" if retry_attempt else ""}
        self.wait_for(lambda: self.socket_connected, 60, what="a Socket Mode connection")
        self._run(self._ws.send_json(envelope))
        return envelope_id

    def wait_ack(self, envelope_id: str, timeout: float = 10) -> dict:
        return self.wait_for(lambda: self.acks.get(envelope_id), timeout, what=f"ack of {envelope_id}")


# ---- what Slack sends to an app --------------------------------------------------------------
def event_callback(team_id: str, event: dict, *, event_id: str | None = None, api_app_id: str = "AFAKE") -> dict:
    return {"token": "legacy", "team_id": team_id, "api_app_id": api_app_id, "event": event,
            "type": "event_callback", "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()), "authorizations": [{"team_id": team_id, "user_id": "UBOT", "is_bot": True}]}


def message_event(channel: str, message: dict, channel_type: str = "channel") -> dict:
    """`channel_type` as Slack sends it: channel, group (private channel), mpim or im."""
    event = {**message, "channel": channel, "event_ts": message["ts"], "channel_type": channel_type}
    if message.get("files"):
        event["subtype"] = "file_share"
    return event


def slash_command(team_id: str, channel: str, user: str, command: str, text: str = "", **extra: str) -> dict:
    return {"token": "legacy", "team_id": team_id, "team_domain": "fake", "channel_id": channel,
            "channel_name": channel.lower(), "user_id": user, "user_name": user.lower(), "command": command,
            "text": text, "api_app_id": "AFAKE", "response_url": "http://127.0.0.1:9/unused",
            "trigger_id": uuid.uuid4().hex, **extra}


def block_actions(team_id: str, channel: str, user: str, message: dict, action_id: str, value: str) -> dict:
    # Slack sends the clicked button's text along (found in the message's blocks, as Slack does)
    text = next((e.get("text") for b in message.get("blocks") or () if b.get("type") == "actions"
                 for e in b.get("elements", ()) if e.get("action_id") == action_id), None)
    return {"type": "block_actions", "team": {"id": team_id, "domain": "fake"}, "user": {"id": user, "team_id": team_id},
            "api_app_id": "AFAKE", "token": "legacy", "trigger_id": uuid.uuid4().hex,
            "channel": {"id": channel}, "container": {"type": "message", "message_ts": message["ts"],
                                                       "channel_id": channel},
            "message": message, "response_url": "http://127.0.0.1:9/unused",
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b", "value": value,
                         "action_ts": str(time.time()), **({"text": text} if text else {})}]}


def view_submission(team_id: str, user: str, view: dict, values: dict[str, str]) -> dict:
    """The user submits an opened modal: `values` by block id (a select takes the option's value);
    inputs not named keep what they were pre-filled with."""
    state: dict = {}
    for block in view["blocks"]:
        element = block["element"]
        given = values.get(block["block_id"])
        if element["type"] == "static_select":
            chosen = next((o for o in element["options"] if o["value"] == given), element.get("initial_option"))
            state[block["block_id"]] = {element["action_id"]: {"type": "static_select", "selected_option": chosen}}
        else:
            value = given if given is not None else element.get("initial_value")
            state[block["block_id"]] = {element["action_id"]: {"type": element["type"], "value": value}}
    return {"type": "view_submission", "team": {"id": team_id, "domain": "fake"},
            "user": {"id": user, "team_id": team_id}, "api_app_id": "AFAKE", "token": "legacy",
            "trigger_id": uuid.uuid4().hex, "view": {**view, "state": {"values": state}}}


def message_shortcut(team_id: str, channel: str, user: str, message: dict, callback_id: str) -> dict:
    return {"type": "message_action", "callback_id": callback_id, "team": {"id": team_id, "domain": "fake"},
            "user": {"id": user, "team_id": team_id}, "channel": {"id": channel}, "message": message,
            "message_ts": message["ts"], "token": "legacy", "trigger_id": uuid.uuid4().hex,
            "response_url": "http://127.0.0.1:9/unused", "action_ts": str(time.time())}


def form_body(payload: dict) -> str:
    """An interactive payload as Slack posts it over HTTP: `payload=<json>` form-encoded."""
    return urlencode({"payload": json.dumps(payload)})


def signed_headers(secret: str, body: str, *, timestamp: int | None = None,
                   content_type: str = "application/json", retry_num: int | None = None) -> dict[str, str]:
    """Slack's request signature: v0=HMAC-SHA256(secret, 'v0:{ts}:{body}')."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    headers = {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}", "Content-Type": content_type}
    if retry_num is not None:
        headers.update({"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"})
    return headers


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _mimetype(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
            "webp": "image/webp"}.get(ext, "application/octet-stream")
