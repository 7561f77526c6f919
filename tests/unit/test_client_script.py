"""Call scripts for ``appliance.app.client``: parsing only (no SIP)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.app.client import Step, load_script, parse_script


def test_parses_every_step_kind_and_resolves_wavs(tmp_path: Path) -> None:
    steps = parse_script(
        {
            "steps": [
                {"say": "a.wav"},
                {"dtmf": "03041982#"},
                {"wait": 4},
                {"barge": "/abs/b.wav", "after_s": 1.5},
                {"hangup": True},
            ]
        },
        tmp_path,
    )
    assert steps == [
        Step("say", wav=tmp_path / "a.wav"),
        Step("dtmf", digits="03041982#"),
        Step("wait", seconds=4.0),
        Step("barge", wav=Path("/abs/b.wav"), seconds=1.5),
        Step("hangup"),
    ]


def test_a_bare_list_is_a_script() -> None:
    assert parse_script([{"dtmf": "1a"}]) == [Step("dtmf", digits="1A")]


def test_load_script_reads_json_relative_to_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "call.json"
    path.write_text('{"steps": [{"say": "turn.wav"}]}')
    assert load_script(path) == [Step("say", wav=tmp_path / "turn.wav")]


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"steps": []},
        [{"sing": "a.wav"}],
        [{"say": "a.wav", "dtmf": "1"}],
        [{"say": ""}],
        [{"dtmf": "12x"}],
        [{"wait": -1}],
        [{"wait": True}],
        [{"barge": "a.wav", "after_s": -2}],
        ["say"],
    ],
)
def test_malformed_scripts_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_script(bad)
