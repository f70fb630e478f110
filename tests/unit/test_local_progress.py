"""On a terminal the local chat shows a running command's progress as one line above the
prompt, updated in place, not a printed line per percent (the prompt is prompt_toolkit's, on
a pipe for keys and no screen)."""

from __future__ import annotations

import io

from bot.adapters.local import PROMPT, LocalAdapter
from bot.adapters.local.terminal import TerminalLines
from bot.commands import Reply


def test_progress_updates_one_line_above_the_prompt(tmp_path):
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    out = io.StringIO()
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        lines = TerminalLines(tmp_path / "history", on_interrupt=lambda: None, out=out)
        chat = LocalAdapter(None, out=out, output_dir=tmp_path / "out")  # rendering text needs no app
        chat.lines = lines
        for percent in range(1, 100):
            chat.render(Reply(text=f"drawing: {percent}%", progress=percent / 100))
        assert out.getvalue() == ""  # nothing printed per percent
        assert lines._message() == f"[ 99%] drawing\n{PROMPT}"  # one line, the latest, percentage once

        chat.render(Reply(text="done", final=True))
        assert out.getvalue() == "done\n" and lines._message() == PROMPT
