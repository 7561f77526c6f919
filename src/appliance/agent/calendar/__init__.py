"""The scheduling calendar, behind the :class:`SchedulingAdapter` interface.

The agent's scheduling tools (:mod:`appliance.agent.scheduling_tools`) talk to a
:class:`SchedulingAdapter`; :class:`SqliteCalendar` is the built-in implementation for clinics
without a practice-management system to integrate with.

Modules:

* :mod:`.adapter`: the data types, errors, the adapter protocol and :func:`idempotency_key`;
* :mod:`.store`: :class:`SqliteCalendar`, one SQLite file;
* :mod:`.schema`: its migrations, time format and row mapping;
* :mod:`.matching`: the identity check's name comparison;
* :mod:`.demo`: fictional demo data (:func:`seed_demo`).

Conventions:

* **Times** are naive ``datetime`` values in local clinic time (the appliance's system time
  zone). Timezone-aware values are rejected with ``ValueError``.
* **Identity** is checked by :meth:`SchedulingAdapter.find_patient`: given name, family name
  and date of birth together; the date of birth must match exactly, names are compared
  case-, accent- and whitespace-insensitively with a strict fuzzy threshold for small
  speech-recognition spelling differences ("Jon"/"John", "Lopes"/"Lopez").
* **Idempotency**: every mutating call takes an idempotency key (see
  :func:`idempotency_key`); a replayed call returns the original result and changes nothing.
* **No PHI in errors**: error messages carry IDs only, never names or dates of birth.
"""

from __future__ import annotations

from appliance.agent.calendar.adapter import (
    BOOKED,
    CANCELLED,
    Appointment,
    NotFound,
    Patient,
    Provider,
    SchedulingAdapter,
    SchedulingError,
    Slot,
    SlotUnavailable,
    idempotency_key,
)
from appliance.agent.calendar.demo import seed_demo
from appliance.agent.calendar.matching import NAME_MATCH_THRESHOLD
from appliance.agent.calendar.store import SqliteCalendar

__all__ = [
    "BOOKED",
    "CANCELLED",
    "NAME_MATCH_THRESHOLD",
    "Appointment",
    "NotFound",
    "Patient",
    "Provider",
    "SchedulingAdapter",
    "SchedulingError",
    "Slot",
    "SlotUnavailable",
    "SqliteCalendar",
    "idempotency_key",
    "seed_demo",
]
