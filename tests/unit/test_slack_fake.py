"""The fake Slack speaks the wire format the real slack_sdk clients expect (so adapter tests mean something)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest


pytest.importorskip("slack_sdk")


@pytest.fixture
def fake(slack_fake):
    return slack_fake


def _client(fake, token=None):
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(token=token or fake.bot_token, base_url=fake.api_url)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
    return client


def test_web_api_messages_uploads_and_history(fake):
    async def scenario():
        client = _client(fake)
        assert (await client.auth_test())["user_id"] == "UBOT"
        posted = await client.chat_postMessage(channel="C1", text="working")
        await client.chat_update(channel="C1", ts=posted["ts"], text="done")
        await client.files_upload_v2(channel="C1", thread_ts=posted["ts"], content=b"\x89PNG-bytes",
                                     filename="a.png", initial_comment="here")
        replies = await client.conversations_replies(channel="C1", ts=posted["ts"])
        history = await client.conversations_history(channel="C1", limit=1)
        await client.session.close() if client.session else None
        return posted, replies, history

    posted, replies, history = asyncio.run(scenario())
    thread = replies["messages"]
    assert thread[0]["text"] == "done" and thread[1]["files"][0]["name"] == "a.png"
    assert fake.file_data[thread[1]["files"][0]["id"]] == b"\x89PNG-bytes"
    assert [c.method for c in fake.calls][-3:] == ["files.completeUploadExternal", "conversations.replies",
                                                    "conversations.history"]
    assert history["messages"][0]["ts"] == posted["ts"]  # thread replies stay out of history


def test_bad_token_and_private_download_without_token(fake):
    info = fake.add_file(b"PNGDATA", "p.png")

    async def scenario():
        from slack_sdk.errors import SlackApiError

        with pytest.raises(SlackApiError, match="invalid_auth"):
            await _client(fake, token="xoxb-wrong").auth_test()
        async with aiohttp.ClientSession() as session:
            async with session.get(info["url_private"]) as anonymous:
                page = (anonymous.content_type, await anonymous.read())
            headers = {"Authorization": f"Bearer {fake.bot_token}"}
            async with session.get(info["url_private"], headers=headers) as authorised:
                data = (authorised.content_type, await authorised.read())
        return page, data

    page, data = asyncio.run(scenario())
    assert page[0] == "text/html" and b"Sign in" in page[1]
    assert data == ("image/png", b"PNGDATA")


def test_rate_limited_calls_are_retried_after_retry_after(fake):
    fake.rate_limit("conversations.history", times=1, retry_after=1)
    result = asyncio.run(_client(fake).conversations_history(channel="C1"))
    assert result["ok"] and len(fake.calls_to("conversations.history")) == 2


def test_socket_mode_hello_envelopes_and_acks(fake):
    from slack_sdk.socket_mode.aiohttp import SocketModeClient
    from slack_sdk.socket_mode.response import SocketModeResponse

    async def scenario():
        client = SocketModeClient(app_token=fake.app_token, web_client=_client(fake))

        async def listener(client, request):
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

        client.socket_mode_request_listeners.append(listener)
        await client.connect()
        envelope_id = await asyncio.to_thread(fake.socket_send, "events_api", {"event": {"type": "app_mention"}})
        ack = await asyncio.to_thread(fake.wait_ack, envelope_id)
        await client.close()
        return ack

    assert asyncio.run(scenario())["envelope_id"]
    assert fake.calls_to("apps.connections.open")
