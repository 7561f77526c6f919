"""The admin page's own checks of the settings it edits (before the agent's loader)."""

from __future__ import annotations

import pytest

from appliance.admin.rbac import ROLE_PERMISSIONS, Permission, Role
from appliance.admin.settings_fields import (
    FieldError,
    NotAllowed,
    check_updates,
    editable_values,
    parse_bind,
    parse_disclosure,
    parse_peers,
    parse_target,
    parse_webhook,
)
from appliance.config.settings import ApplianceSettings


def can(role: Role):  # noqa: ANN201
    return lambda perm: perm in ROLE_PERMISSIONS[role]


def test_peers_are_normalised() -> None:
    assert parse_peers("10.0.0.5\n192.168.1.0/24\r\n\n 10.0.0.5/32 ") == [
        "10.0.0.5/32",
        "192.168.1.0/24",
    ]
    assert parse_peers(["2001:db8::1", "fd00::/48"]) == ["2001:db8::1/128", "fd00::/48"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0.0.0.0/0", "too wide"),
        ("10.0.0.0/7", "too wide"),
        ("::/0", "too wide"),
        ("garbage", "not an IP address"),
        ("10.0.0.300", "not an IP address"),
        ("10.0.0.5/24", "host bits set: write 10.0.0.0/24"),
        ("", "at least one"),
        ("\n \n", "at least one"),
    ],
)
def test_bad_peers_are_refused(text: str, needle: str) -> None:
    with pytest.raises(FieldError, match=needle) as caught:
        parse_peers(text)
    assert caught.value.key == "sip.allowed_peers"


def test_too_many_peers() -> None:
    with pytest.raises(FieldError, match="at most 64"):
        parse_peers([f"10.0.{i}.1" for i in range(65)])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.20:5060", "10.0.0.20:5060"), ("[fd00::1]:5070", "[fd00::1]:5070")],
)
def test_bind(text: str, expected: str) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    "text", ["10.0.0.20", "host.lan:5060", "10.0.0.20:0", "10.0.0.20:70000", "fd00::1:5060", ""]
)
def test_bad_bind_is_refused(text: str) -> None:
    with pytest.raises(FieldError):
        parse_bind(text)


def test_target_and_webhook() -> None:
    assert parse_target("") == ""
    assert parse_target(" sip:frontdesk@10.0.0.5 ") == "sip:frontdesk@10.0.0.5"
    assert parse_target("sips:queue@pbx.lan:5061") == "sips:queue@pbx.lan:5061"
    for bad in ["frontdesk@10.0.0.5", "http://x", "sip:a b@c", "sip:a@b@c"]:
        with pytest.raises(FieldError, match="SIP URI"):
            parse_target(bad)
    assert parse_webhook("http://10.0.0.7:8080/screenpop") == "http://10.0.0.7:8080/screenpop"
    assert parse_webhook("https://cti.clinic.lan/pop") == "https://cti.clinic.lan/pop"
    assert parse_webhook("") == ""
    for bad, needle in [
        ("ftp://10.0.0.7/x", "http"),
        ("http://8.8.8.8/x", "public address"),
        ("http://user:pw@10.0.0.7/x", "user name"),
        ("http://10.0.0.7:99999/x", "not a URL"),
        ("http:///x", "with a host"),
    ]:
        with pytest.raises(FieldError, match=needle):
            parse_webhook(bad)


def test_disclosure_must_state_it_is_automated() -> None:
    assert (
        parse_disclosure("Hi, I'm {clinic}'s AI assistant.") == "Hi, I'm {clinic}'s AI assistant."
    )
    for bad in ["Hello, you've reached {clinic}.", "Hi, I'm Sarah.", "", "said\nAI"]:
        with pytest.raises(FieldError):
            parse_disclosure(bad)


def test_permissions_split_by_field() -> None:
    lead = can(Role.CONTACT_CENTRE_LEAD)
    engineer = can(Role.PLATFORM_ENGINEER)
    assert check_updates({"transfer": {"target": "sip:desk@10.0.0.5"}}, lead) == {
        "transfer": {"target": "sip:desk@10.0.0.5"}
    }
    with pytest.raises(NotAllowed):
        check_updates({"sip": {"allowed_peers": ["10.0.0.5"]}}, lead)
    with pytest.raises(NotAllowed):
        check_updates({"clinic": {"name": "X"}}, can(Role.VIEWER))
    # The engineer may change both kinds.
    assert check_updates(
        {"sip": {"allowed_peers": "10.0.0.5"}, "transfer": {"webhook_url": ""}}, engineer
    ) == {"sip": {"allowed_peers": ["10.0.0.5/32"]}, "transfer": {"webhook_url": ""}}
    with pytest.raises(FieldError, match="not a setting"):
        check_updates({"models": {"llm": "x.gguf"}}, engineer)


def test_editable_values_follow_permissions() -> None:
    settings = ApplianceSettings()
    lead = editable_values(settings, can(Role.CONTACT_CENTRE_LEAD))
    assert lead == {"transfer": {"target": "", "webhook_url": ""}}
    everything = editable_values(settings, lambda perm: True)
    assert everything["sip"]["allowed_peers"] == ["127.0.0.1/32"]
    assert set(everything) == {"sip", "clinic", "agent", "transfer"}
    assert Permission.MANAGE_TRANSFER in ROLE_PERMISSIONS[Role.PLATFORM_ENGINEER]
