"""The example's data, generated the same way by the service and by the DataService stub.

Both sides seed from these functions, so the old path (SQLite, the in-process cache) and the new
path (DataService over HTTP) answer the same thing, until the stub is told to lie
(``wrong_data``). Ids are 1-based: providers ``1..PROVIDERS``, users ``1..USERS``, sessions
``1..SESSIONS`` (session ``s`` belongs to user :func:`session_user`).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "PROVIDERS",
    "PROVIDER_COLUMNS",
    "SESSIONS",
    "USERS",
    "provider",
    "session_user",
    "user",
]

PROVIDERS: Final = 500
USERS: Final = 1000
SESSIONS: Final = 2000

#: The provider record's fields, in the order of the SQLite table's columns.
PROVIDER_COLUMNS: Final = ("id", "name", "specialty", "city", "rating", "active_patients")

_SPECIALTIES: Final = ("cardiology", "dermatology", "family medicine", "neurology", "pediatrics")
_CITIES: Final = ("Lyon", "Porto", "Gdansk", "Leeds", "Graz", "Turku", "Bilbao")
_LOCALES: Final = ("en-GB", "fr-FR", "pt-PT", "pl-PL", "de-AT", "fi-FI", "es-ES")

Record = dict[str, str | int | float]


def provider(provider_id: int) -> Record:
    """Provider ``provider_id`` (1..PROVIDERS) as both paths serve it."""
    i = provider_id
    return {
        "id": i,
        "name": f"Provider {i:04d}",
        "specialty": _SPECIALTIES[i % len(_SPECIALTIES)],
        "city": _CITIES[(i * 3) % len(_CITIES)],
        "rating": (30 + (i * 37) % 21) / 10,  # 3.0 .. 5.0, one decimal: exact through JSON
        "active_patients": (i * 7919) % 1000,
    }


def user(user_id: int) -> Record:
    """User ``user_id`` (1..USERS): the "basic" fields a session read returns."""
    i = user_id
    return {
        "id": i,
        "display_name": f"User {i:05d}",
        "email": f"user{i}@example.test",
        "locale": _LOCALES[i % len(_LOCALES)],
    }


def session_user(session_id: int) -> int:
    """The user that session ``session_id`` (1..SESSIONS) belongs to."""
    return (session_id * 31) % USERS + 1
