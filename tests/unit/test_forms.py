"""Buttons that ask first (`Action.ask`): their encoding, and the neutral form both platforms show."""

from __future__ import annotations

import pytest

from bot.actions import decode_action, encode_action
from bot.commands import Action
from bot.forms import filled, form_fields


def test_an_asking_action_round_trips_and_an_old_one_still_decodes():
    action = Action("Remix", "imagine", {"from_job": "f" * 32, "mode": "vary"}, ask=("prompt", "mode"))
    text = encode_action(action)
    assert len(text) <= 100 and text.endswith(',["prompt","mode"]]')
    back = decode_action(text, label="Remix")
    assert back == action
    assert decode_action('cb1:["imagine",{"mode":"vary"}]').ask == ()  # buttons sent before asking existed
    for bad in ('cb1:["imagine",{},"prompt"]', 'cb1:["imagine",{},[1]]', 'cb1:["imagine",{},[],[]]'):
        with pytest.raises(ValueError):
            decode_action(bad)


def test_form_fields_come_from_the_command_and_emptied_ones_leave_the_option_out():
    from plugins.imagine import imagine

    action = Action("Remix", "imagine", {"from_job": "abc", "mode": "vary"}, ask=("prompt", "mode", "nonsense"))
    prompt, mode = form_fields(action, imagine)  # an option the command lacks is no field
    assert (prompt.name, prompt.value, prompt.long, prompt.choices) == ("prompt", "", True, ())
    assert "empty: as before" in prompt.hint
    assert mode.value == "vary" and "upscale" in mode.choices and mode.hint.startswith("one of: reroll, vary")
    assert filled(action, {"prompt": " a fox at dusk ", "mode": "zoom-out"}) == {
        "from_job": "abc", "mode": "zoom-out", "prompt": "a fox at dusk"}
    assert filled(action, {"prompt": "", "mode": ""}) == {"from_job": "abc"}
    assert filled(action, {}) == action.options
