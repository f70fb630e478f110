"""The Slack app manifest for the loaded plugins: every command, shortcut, event and scope.

`deploy/slack-app-manifest.yml` is this for the built-in plugins. With third-party plugins
installed, print your own and paste it into api.slack.com/apps ("From an app manifest"):

    python -m bot.adapters.slack.manifest [--request-url https://HOST/slack/events] > manifest.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable

from bot.commands import Attachment, CommandSpec

BOT_SCOPES = [
    "app_mentions:read",  # @clipbot whatis
    "channels:history", "groups:history", "im:history", "mpim:history",  # message events, threads, backfill
    "channels:read", "groups:read", "im:read", "mpim:read",  # users.conversations: who may see what
    "chat:write",  # answers, progress edits, private replies
    "commands",  # slash commands and shortcuts
    "files:read",  # download posted pictures (without it Slack sends a login page)
    "files:write",  # upload charts, contact sheets and generated pictures
    "users:read",  # users.info: workspace admins and owners are clipbot admins
]
BOT_EVENTS = ["app_mention", "channel_left", "file_deleted", "group_left", "message.channels", "message.groups",
              "message.im", "message.mpim"]
# Slack's built-in slash commands: apps cannot register these names (Slack rejects the whole
# manifest), so such a command is /clip-NAME there (https://slack.com/help/articles/201259356).
RESERVED = frozenset({"me", "status", "away", "dnd", "shrug", "remind", "msg", "feed", "who", "collapse", "expand",
                      "leave", "join", "open", "search", "topic", "mute", "pro", "shortcuts", "invite", "apps",
                      "active", "archive", "call", "giphy"})


def slack_specs(pm: Any, *, plugins: Iterable[str] | None = None) -> list[CommandSpec]:
    """The commands Slack serves: every loaded plugin's (or those of `plugins`) offered on Slack."""
    wanted = set(plugins) if plugins is not None else None
    return [spec for impl in pm.hook.clipbot_commands.get_hookimpls()
            if wanted is None or impl.plugin_name in wanted
            for spec in impl.function() or () if spec.offered_on("slack")]


def slash_name(command: str, prefix: str = "") -> str:
    """The Slack slash command serving `command`: /PREFIXcommand, or /clip-command for a built-in name."""
    name = f"{prefix}{command}"
    return f"/clip-{name}" if name in RESERVED else f"/{name}"


def manifest(specs: Iterable[CommandSpec], *, prefix: str = "", request_url: str | None = None,
             name: str = "clipbot") -> dict[str, Any]:
    """Socket Mode unless `request_url` (HTTP mode: https://HOST/slack/events) is given."""
    specs = sorted(specs, key=lambda s: s.name)
    commands = []
    for spec in specs:
        command = {"command": slash_name(spec.name, prefix), "description": spec.description[:2000],
                   "usage_hint": usage_hint(spec), "should_escape": False}
        if request_url:
            command["url"] = request_url
        commands.append({k: v for k, v in command.items() if v != ""})
    # a message shortcut for each command a picture alone can run (Slack allows 24 characters a name)
    shortcuts = [{"name": s.message_action_name(24), "type": "message",
                  "callback_id": f"clipbot_{s.name}", "description": s.description[:150]}
                 for s in specs if s.picture_option() is not None]
    events: dict[str, Any] = {"bot_events": BOT_EVENTS}
    interactivity: dict[str, Any] = {"is_enabled": True}
    if request_url:
        events["request_url"] = request_url
        interactivity["request_url"] = request_url
    return {
        "display_information": {"name": name, "description": "CLIP for your team's chat: what is this picture, "
                                "find pictures by text, imagine new ones."},
        "features": {"bot_user": {"display_name": name, "always_online": True},
                     "shortcuts": shortcuts, "slash_commands": commands},
        "oauth_config": {"scopes": {"bot": BOT_SCOPES}},
        "settings": {"event_subscriptions": events, "interactivity": interactivity,
                     "org_deploy_enabled": False, "socket_mode_enabled": request_url is None,
                     "token_rotation_enabled": False},
    }


def usage_hint(spec: CommandSpec) -> str:
    """The options a slash command can take: text only (pictures come from shortcuts and mentions)."""
    parts = []
    for option in spec.options:
        if option.type is Attachment:
            continue
        word = "|".join(option.choices) if option.choices else option.name
        parts.append(f"{option.name}: <{word}>" if option.required else f"[{option.name}: <{word}>]")
    return " ".join(parts)[:1000]


def main(argv: list[str] | None = None) -> int:
    from bot.config import Settings
    from bot.plugins import build_plugin_manager

    parser = argparse.ArgumentParser(prog="python -m bot.adapters.slack.manifest", description=__doc__.split("\n")[0])
    parser.add_argument("--request-url", help="HTTP mode: https://HOST/slack/events (default: Socket Mode)")
    parser.add_argument("--yaml", action="store_true", help="YAML instead of JSON (needs PyYAML)")
    args = parser.parse_args(argv)
    from bot.adapters.slack import adapter

    specs = slack_specs(build_plugin_manager(Settings()))
    result = manifest(specs, prefix=adapter.load_settings().command_prefix, request_url=args.request_url)
    if args.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(result, sort_keys=False, allow_unicode=True, width=110))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
