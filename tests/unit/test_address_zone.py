"""A patient's address to the calling window's zones, offline (GeoNames cities, US states)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from appliance.policy.address_zone import PostalAddress, address_zones
from appliance.policy.calling_window import CallingWindow, callee_zones


@pytest.mark.parametrize(
    ("address", "zones"),
    [
        # A city in its state: that city's zone.
        (PostalAddress(city="Springfield", region="IL"), ("America/Chicago",)),
        (PostalAddress(city="springfield", region="Ohio"), ("America/New_York",)),
        (PostalAddress(city="Phoenix", region="AZ"), ("America/Phoenix",)),
        # The same name in several states (IL, MO, MA, OH, OR...), no state given: every
        # candidate zone.
        (
            PostalAddress(city="Springfield"),
            ("America/Chicago", "America/Los_Angeles", "America/New_York"),
        ),
        # A state alone: its zones (Indiana spans Central and Eastern).
        (PostalAddress(region="Arizona"), ("America/Phoenix",)),
        # A town too small for the city list falls back to its state.
        (PostalAddress(city="Nowhereville", region="HI"), ("Pacific/Honolulu",)),
        # Other countries: the city, else the country's zones.
        (PostalAddress(city="Toronto", country="CA"), ("America/Toronto",)),
        (PostalAddress(city="Manchester", country="gb"), ("Europe/London",)),
        (PostalAddress(country="FR"), ("Europe/Paris",)),
    ],
)
def test_address_gives_the_zones_that_place_it(
    address: PostalAddress, zones: tuple[str, ...]
) -> None:
    assert address_zones(address) == zones


def test_multi_zone_states_and_unknowns() -> None:
    indiana = address_zones(PostalAddress(region="IN"))
    assert "America/Chicago" in indiana and "America/Indiana/Indianapolis" in indiana
    assert all(not z.endswith("Indianapolis") or z.startswith("America/Indiana/") for z in indiana)
    assert len(address_zones(PostalAddress(country="US"))) > 10  # the whole country
    assert address_zones(PostalAddress()) == ()  # nothing known: the number decides
    assert address_zones(PostalAddress(region="Atlantis")) == ()  # not a state: no guess
    assert address_zones(PostalAddress(city="Paris", country="XX")) == ()


def test_the_address_wins_over_the_number_in_the_window() -> None:
    """A New York (+1 212) mobile whose holder lives in Honolulu.

    13:00 UTC is 08:00 in New York (allowed by the number) but 03:00 in Honolulu (refused by
    the address).
    """
    window = CallingWindow()
    now = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    by_number = callee_zones("+12125550123")
    assert window.check(now, by_number).allowed
    home = address_zones(PostalAddress(city="Honolulu", region="HI"))
    by_address = callee_zones("+12125550123", home)
    assert by_address == ("Pacific/Honolulu",)
    decision = window.check(now, by_address)
    assert not decision.allowed and decision.reason == "outside-window"
    # An address that places nothing leaves the number in charge.
    assert callee_zones("+12125550123", address_zones(PostalAddress())) == by_number
    # Indiana: only the hours inside the window in both of its zones count. 13:30 UTC is
    # 08:30 in Indianapolis but 07:30 in Chicago: refused.
    indiana = callee_zones("+13175550123", address_zones(PostalAddress(region="IN")))
    assert not window.check(datetime(2026, 12, 1, 13, 30, tzinfo=UTC), indiana).allowed
    assert window.check(datetime(2026, 12, 1, 14, 30, tzinfo=UTC), indiana).allowed
