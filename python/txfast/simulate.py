"""Labelled transaction simulator.

:func:`simulate` generates card transactions with injected, labelled fraud and returns them as a
:class:`pyarrow.Table` sorted by event time, with the columns of the ``transactions_raw`` event
contract plus ``scenario`` (the pattern that generated each row). :func:`iter_json_batches`
encodes such a table as contract events and :func:`write_table` saves it.

Legitimate behaviour:

* every card belongs to a user (some users own two or three cards; about 5 % of cards have no
  known user) living in one of 42 cities in 13 European and US countries; card-present
  transactions happen at merchants within about 15 km of the city centre, so within about
  30 km of each other;
* each card has a handful of regular merchants over a fixed set of usage slots (groceries,
  bakery, fuel, restaurants, fast food, transport, pharmacy, clothing, department store,
  electronics, jewellery, ATM, online marketplace and shops, food delivery, digital goods,
  gift cards, crypto, money transfer, telephone travel bookings, charity) with card-specific
  weights, and now and then a random merchant of the same kind;
* cards average 3 transactions a day, gamma-distributed between cards; day of week and
  merchant kind set the hourly rhythm in the cardholder's local time zone (little at night,
  lunch and evening peaks, commuting peaks on weekdays, quiet Sundays for shops);
* amounts are log-normal per merchant kind times a per-card spending level, in the card's
  currency (EUR, GBP, USD, CHF or SEK, converted with :data:`EUR_RATES`); ATM withdrawals are
  in round notes;
* monthly subscriptions (MCC 4899, 5815) are billed at night on a fixed day at a fixed price;
* about one cardholder in twelve per month travels for a few days: no transactions in flight,
  then local merchants, the local currency and a foreign IP country.

Fraud (``label = 1``) makes up ``fraud_rate`` of the rows, split between the scenarios of
:data:`SCENARIOS`. Victims are cards without earlier fraud where possible, each carrying a burst
of fraudulent rows, and half of the account takeovers hit cards that were card-tested shortly
before.

The same arguments always produce the same table. The population (merchants, cards, users,
devices, regular merchants) depends only on ``cards``, ``seed``, ``merchants`` and
``users_per_card``, so two periods simulated with the same seed describe the same cardholders.
Transaction ids are ``tx-<seed>-<start>-<n>`` (``<start>`` is the period's start as
``YYYYMMDD``, plus ``THHMMSS`` when it is not midnight UTC), so consecutive periods of one
population never share an id.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from txfast import _simkernels as K
from txfast.contract import CONTRACT_FIELDS

__all__ = [
    "CHANNELS",
    "CONTRACT_FIELDS",
    "CURRENCIES",
    "EUR_RATES",
    "SCENARIOS",
    "iter_json_batches",
    "simulate",
    "write_table",
]

MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000

#: Scenario names; index 0 is legitimate behaviour, the others are labelled fraud.
SCENARIOS: tuple[str, ...] = (
    "normal",
    "card_testing",
    "account_takeover",
    "impossible_travel",
    "compromised_merchant",
    "amount_anomaly",
)
#: Payment channels in the order of their internal codes.
CHANNELS: tuple[str, ...] = ("pos", "ecom", "atm", "moto", "transfer")
#: Currencies used by the simulator.
CURRENCIES: tuple[str, ...] = ("EUR", "USD", "GBP", "CHF", "SEK")
#: Units of each currency per euro; amounts are generated in euro and converted with these.
EUR_RATES: dict[str, float] = {"EUR": 1.0, "USD": 1.08, "GBP": 0.85, "CHF": 0.94, "SEK": 11.3}

_POS, _ECOM, _ATM, _MOTO, _TRANSFER = range(5)
_NORMAL, _TESTING, _TAKEOVER, _TRAVEL, _COMPROMISED, _AMOUNT = range(6)
#: Share of the fraud rows given to each fraud scenario (same order as SCENARIOS[1:]).
_SCENARIO_SHARE = np.array([0.32, 0.28, 0.10, 0.18, 0.12])

# --------------------------------------------------------------------------------------------
# Geography
# --------------------------------------------------------------------------------------------

# (ISO code, currency, share of cards). Countries with share 0 only host fraud.
_COUNTRY_TABLE: tuple[tuple[str, str, float], ...] = (
    ("DE", "EUR", 0.20),
    ("FR", "EUR", 0.16),
    ("ES", "EUR", 0.10),
    ("IT", "EUR", 0.10),
    ("NL", "EUR", 0.07),
    ("BE", "EUR", 0.04),
    ("AT", "EUR", 0.04),
    ("PT", "EUR", 0.03),
    ("IE", "EUR", 0.02),
    ("GB", "GBP", 0.10),
    ("US", "USD", 0.07),
    ("CH", "CHF", 0.04),
    ("SE", "SEK", 0.03),
    ("BR", "USD", 0.0),
    ("TH", "USD", 0.0),
    ("ZA", "USD", 0.0),
    ("MX", "USD", 0.0),
    ("ID", "USD", 0.0),
    ("AE", "USD", 0.0),
    ("NG", "USD", 0.0),
    ("VN", "USD", 0.0),
    ("RO", "USD", 0.0),
)
# (country, latitude, longitude, share within the country, UTC offset in hours)
_CITY_TABLE: tuple[tuple[str, float, float, float, float], ...] = (
    ("DE", 52.520, 13.405, 0.30, 1),  # Berlin
    ("DE", 53.551, 9.994, 0.20, 1),  # Hamburg
    ("DE", 48.137, 11.575, 0.20, 1),  # Munich
    ("DE", 50.938, 6.960, 0.15, 1),  # Cologne
    ("DE", 50.110, 8.682, 0.15, 1),  # Frankfurt
    ("FR", 48.857, 2.352, 0.50, 1),  # Paris
    ("FR", 45.764, 4.836, 0.20, 1),  # Lyon
    ("FR", 43.297, 5.370, 0.20, 1),  # Marseille
    ("FR", 43.605, 1.444, 0.10, 1),  # Toulouse
    ("ES", 40.417, -3.704, 0.40, 1),  # Madrid
    ("ES", 41.385, 2.173, 0.35, 1),  # Barcelona
    ("ES", 39.470, -0.376, 0.15, 1),  # Valencia
    ("ES", 37.389, -5.984, 0.10, 1),  # Seville
    ("IT", 41.903, 12.496, 0.35, 1),  # Rome
    ("IT", 45.464, 9.190, 0.35, 1),  # Milan
    ("IT", 40.852, 14.268, 0.15, 1),  # Naples
    ("IT", 45.070, 7.687, 0.15, 1),  # Turin
    ("NL", 52.368, 4.904, 0.50, 1),  # Amsterdam
    ("NL", 51.924, 4.478, 0.30, 1),  # Rotterdam
    ("NL", 52.091, 5.122, 0.20, 1),  # Utrecht
    ("BE", 50.850, 4.352, 0.60, 1),  # Brussels
    ("BE", 51.219, 4.402, 0.40, 1),  # Antwerp
    ("AT", 48.208, 16.373, 0.70, 1),  # Vienna
    ("AT", 47.071, 15.439, 0.30, 1),  # Graz
    ("PT", 38.722, -9.139, 0.60, 0),  # Lisbon
    ("PT", 41.158, -8.629, 0.40, 0),  # Porto
    ("IE", 53.350, -6.260, 0.80, 0),  # Dublin
    ("IE", 51.898, -8.476, 0.20, 0),  # Cork
    ("GB", 51.507, -0.128, 0.55, 0),  # London
    ("GB", 53.481, -2.243, 0.20, 0),  # Manchester
    ("GB", 52.486, -1.890, 0.15, 0),  # Birmingham
    ("GB", 55.953, -3.188, 0.10, 0),  # Edinburgh
    ("US", 40.713, -74.006, 0.35, -5),  # New York
    ("US", 41.878, -87.630, 0.20, -6),  # Chicago
    ("US", 34.052, -118.244, 0.30, -8),  # Los Angeles
    ("US", 25.762, -80.192, 0.15, -5),  # Miami
    ("CH", 47.377, 8.542, 0.50, 1),  # Zurich
    ("CH", 46.204, 6.143, 0.30, 1),  # Geneva
    ("CH", 47.560, 7.589, 0.20, 1),  # Basel
    ("SE", 59.329, 18.069, 0.60, 1),  # Stockholm
    ("SE", 57.709, 11.975, 0.25, 1),  # Gothenburg
    ("SE", 55.605, 13.004, 0.15, 1),  # Malmo
    ("BR", -23.551, -46.633, 1.0, -3),  # Sao Paulo
    ("TH", 13.756, 100.502, 1.0, 7),  # Bangkok
    ("ZA", -26.204, 28.047, 1.0, 2),  # Johannesburg
    ("MX", 19.433, -99.133, 1.0, -6),  # Mexico City
    ("ID", -6.209, 106.846, 1.0, 7),  # Jakarta
    ("AE", 25.205, 55.271, 1.0, 4),  # Dubai
    ("NG", 6.524, 3.379, 1.0, 1),  # Lagos
    ("VN", 10.823, 106.630, 1.0, 7),  # Ho Chi Minh City
    ("RO", 44.426, 26.103, 1.0, 2),  # Bucharest
)
#: Minimum great-circle distance of an impossible-travel location from the card's home city.
_FAR_KM = 2000.0

# --------------------------------------------------------------------------------------------
# Merchant kinds
# --------------------------------------------------------------------------------------------


class _Kind(NamedTuple):
    mcc: str
    channel: int
    merchant_share: float  # relative number of merchants of this kind
    median_eur: float  # median amount
    sigma: float  # log-normal spread
    profile: str  # hourly rhythm
    slots: int  # regular merchants a card can have of this kind
    usage: float  # share of a typical card's transactions
    keep: float  # probability that a card uses this kind at all
    dow: tuple[float, ...]  # Monday..Sunday activity factors
    abroad: bool  # merchants exist in fraud-only countries


_FLAT = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
_SHOPS = (0.8, 0.8, 0.9, 1.0, 1.2, 1.6, 0.25)
_ONLINE = (1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 1.3)
_GROCER = (1.0, 1.0, 1.0, 1.0, 1.1, 1.3, 0.25)
_BAKER = (1.0, 1.0, 1.0, 1.0, 1.0, 1.3, 0.8)
_FUEL = (1.0, 1.0, 1.0, 1.0, 1.1, 1.0, 0.6)
_DINING = (0.8, 0.8, 0.9, 1.0, 1.3, 1.4, 1.0)
_QUICK = (1.0, 1.0, 1.0, 1.0, 1.1, 1.1, 0.9)
_COMMUTE = (1.0, 1.0, 1.0, 1.0, 1.0, 0.45, 0.35)
_WEEKDAYS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2)
_CASH = (1.0, 1.0, 1.0, 1.0, 1.3, 1.2, 0.8)
_DELIVERY = (0.8, 0.8, 0.9, 1.0, 1.3, 1.4, 1.4)
_KINDS: tuple[_Kind, ...] = (
    _Kind("5411", _POS, 0.16, 28.0, 0.70, "shop", 2, 0.20, 1.00, _GROCER, True),
    _Kind("5462", _POS, 0.05, 5.5, 0.45, "morning", 1, 0.05, 0.60, _BAKER, False),
    _Kind("5541", _POS, 0.05, 55.0, 0.35, "allday", 1, 0.05, 0.60, _FUEL, False),
    _Kind("5812", _POS, 0.12, 26.0, 0.60, "meal", 2, 0.09, 0.90, _DINING, True),
    _Kind("5814", _POS, 0.07, 9.5, 0.50, "meal", 1, 0.07, 0.80, _QUICK, False),
    _Kind("4111", _POS, 0.03, 3.2, 0.45, "commute", 1, 0.10, 0.55, _COMMUTE, False),
    _Kind("5912", _POS, 0.04, 15.0, 0.70, "allday", 1, 0.03, 0.80, _WEEKDAYS, False),
    _Kind("5651", _POS, 0.06, 55.0, 0.70, "shop", 1, 0.025, 0.80, _SHOPS, False),
    _Kind("5311", _POS, 0.04, 38.0, 0.80, "shop", 1, 0.025, 0.70, _SHOPS, False),
    _Kind("5732", _POS, 0.03, 110.0, 0.90, "shop", 1, 0.008, 0.50, _SHOPS, True),
    _Kind("5944", _POS, 0.01, 180.0, 0.80, "shop", 1, 0.002, 0.20, _SHOPS, True),
    _Kind("6011", _ATM, 0.06, 100.0, 0.60, "atm", 1, 0.04, 0.85, _CASH, True),
    _Kind("5999", _ECOM, 0.05, 32.0, 0.90, "online", 1, 0.08, 0.90, _ONLINE, False),
    _Kind("5651", _ECOM, 0.02, 60.0, 0.70, "online", 1, 0.02, 0.50, _ONLINE, False),
    _Kind("5812", _ECOM, 0.02, 27.0, 0.45, "meal", 1, 0.04, 0.45, _DELIVERY, False),
    _Kind("5732", _ECOM, 0.02, 130.0, 0.90, "online", 1, 0.008, 0.50, _ONLINE, False),
    _Kind("5816", _ECOM, 0.02, 12.0, 0.80, "online", 1, 0.01, 0.30, _ONLINE, False),
    _Kind("6540", _ECOM, 0.01, 50.0, 0.60, "online", 1, 0.003, 0.15, _ONLINE, False),
    _Kind("6051", _ECOM, 0.005, 150.0, 1.00, "online", 1, 0.002, 0.05, _ONLINE, False),
    _Kind("4829", _TRANSFER, 0.01, 150.0, 0.90, "allday", 1, 0.01, 0.30, _FLAT, False),
    _Kind("4722", _MOTO, 0.01, 320.0, 0.70, "allday", 1, 0.003, 0.25, _FLAT, False),
    _Kind("8398", _ECOM, 0.01, 25.0, 0.80, "online", 1, 0.002, 0.15, _ONLINE, False),
    _Kind("4899", _ECOM, 0.01, 12.0, 0.40, "online", 0, 0.0, 0.0, _FLAT, False),
    _Kind("5815", _ECOM, 0.01, 3.0, 0.60, "online", 1, 0.01, 0.30, _ONLINE, False),
)
(
    _K_GROCERY, _K_BAKERY, _K_FUEL, _K_RESTAURANT, _K_FASTFOOD, _K_TRANSPORT, _K_PHARMACY,
    _K_CLOTHING, _K_DEPT, _K_ELECTRONICS, _K_JEWELLERY, _K_ATM, _K_MARKET, _K_CLOTHING_ONLINE,
    _K_DELIVERY, _K_ELECTRONICS_ONLINE, _K_GAMES, _K_GIFTCARDS, _K_CRYPTO, _K_TRANSFER,
    _K_TRAVEL_PHONE, _K_CHARITY, _K_STREAMING, _K_MEDIA,
) = range(len(_KINDS))  # fmt: skip

# Monthly subscription prices in euro (converted and rounded to x.99 in other currencies).
_SUBSCRIPTION_PRICES = np.array([4.99, 7.99, 9.99, 12.99, 13.99, 17.99])

# --------------------------------------------------------------------------------------------
# Hourly rhythms (local time): weekday row, weekend row
# --------------------------------------------------------------------------------------------

_PROFILES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "shop": (
        (.02, .01, .01, .01, .01, .03, .2, .6, 1.2, 2, 2.8, 3.3, 3.8, 3.6, 3.5, 3.8, 4.8, 6, 6.2,
         4.8, 2.8, 1.2, .4, .1),
        (.05, .03, .02, .01, .01, .02, .1, .4, 1.5, 3, 4.5, 5.2, 5.3, 5, 4.8, 4.7, 4.6, 4.3, 3.6,
         2.4, 1.4, .7, .3, .1),
    ),
    "meal": (
        (.1, .05, .03, .02, .02, .03, .2, .6, .8, .6, .6, 2, 5.5, 4.8, 1.5, .7, .7, 1, 2.5, 4.5,
         4.2, 2.6, 1.2, .4),
        (.3, .2, .1, .05, .03, .03, .1, .3, .8, 1.2, 1.5, 2.5, 4.5, 4.5, 2.5, 1.2, 1, 1.2, 2.6,
         4.6, 4.6, 3.2, 1.8, .8),
    ),
    "commute": (
        (.05, .02, .01, .01, .05, .5, 2.5, 6, 5.5, 2, 1, .9, 1, .9, .9, 1.2, 2.5, 5, 5, 2.5, 1.2,
         .8, .5, .2),
        (.2, .15, .05, .02, .02, .1, .4, .8, 1.5, 2.2, 2.8, 3, 3, 3, 3, 2.8, 2.6, 2.6, 2.4, 2,
         1.6, 1.2, .9, .5),
    ),
    "morning": (
        (.01, .01, .01, .01, .02, .3, 2.5, 5.5, 5, 3.2, 2.2, 1.6, 1.3, .8, .6, .6, .8, .9, .6,
         .2, .05, .02, .01, .01),
        (.01, .01, .01, .01, .01, .1, .6, 2, 4.5, 5.5, 4.5, 3, 1.5, .8, .6, .6, .6, .5, .3, .1,
         .05, .02, .01, .01),
    ),
    "allday": (
        (.1, .05, .03, .03, .05, .2, .9, 2.2, 3, 3.2, 3.3, 3.4, 3.4, 3.2, 3.2, 3.4, 3.8, 4.2,
         3.8, 2.8, 1.8, 1, .5, .2),
        (.15, .08, .05, .03, .03, .1, .4, 1.2, 2.4, 3.2, 3.6, 3.7, 3.6, 3.4, 3.3, 3.3, 3.4, 3.4,
         3.1, 2.5, 1.8, 1.1, .6, .3),
    ),
    "online": (
        (.8, .5, .3, .2, .15, .2, .5, 1.2, 1.8, 2.2, 2.5, 2.8, 3.2, 3, 2.8, 2.8, 3, 3.3, 3.8, 4.5,
         5.2, 5.2, 4, 2),
        (1.2, .8, .5, .3, .2, .2, .4, .8, 1.6, 2.6, 3.2, 3.5, 3.6, 3.5, 3.4, 3.4, 3.5, 3.7, 4,
         4.8, 5.4, 5.3, 4.2, 2.4),
    ),
    "atm": (
        (.2, .1, .06, .04, .04, .1, .5, 1.6, 2.6, 2.8, 3, 3.4, 3.8, 3.4, 3, 3, 3.4, 4, 4.2, 3.6,
         2.6, 1.6, .9, .5),
        (.6, .4, .25, .1, .05, .05, .2, .6, 1.5, 2.6, 3.4, 3.8, 3.8, 3.5, 3.2, 3.1, 3.2, 3.4, 3.4,
         3.2, 2.8, 2, 1.4, 1),
    ),
    "fraud": (
        (3, 3.2, 3.3, 3.2, 3, 2.6, 2, 1.8, 1.8, 2, 2.2, 2.4, 2.5, 2.5, 2.5, 2.5, 2.5, 2.6, 2.8, 3,
         3.2, 3.3, 3.3, 3.1),
        (3, 3.2, 3.3, 3.2, 3, 2.6, 2, 1.8, 1.8, 2, 2.2, 2.4, 2.5, 2.5, 2.5, 2.5, 2.5, 2.6, 2.8, 3,
         3.2, 3.3, 3.3, 3.1),
    ),
}  # fmt: skip
_PROFILE_NAMES = tuple(_PROFILES)
_FRAUD_PROFILE = _PROFILE_NAMES.index("fraud")
# Relative transaction volume per day of week (Monday..Sunday).
_DAY_VOLUME = np.array([0.97, 0.97, 1.0, 1.02, 1.12, 1.08, 0.78])


# --------------------------------------------------------------------------------------------
# Static tables as arrays
# --------------------------------------------------------------------------------------------


class _Tables(NamedTuple):
    country_codes: tuple[str, ...]
    country_currency: np.ndarray  # int8 index into CURRENCIES
    country_weight: np.ndarray  # share of cards
    country_main_city: np.ndarray
    n_home_countries: int
    city_country: np.ndarray
    city_lat: np.ndarray
    city_lon: np.ndarray
    city_tz_ms: np.ndarray
    city_weight: np.ndarray  # share of cards (0 for fraud-only cities)
    far: np.ndarray  # (cities, cities) bool: farther apart than _FAR_KM
    kind_channel: np.ndarray
    kind_local: np.ndarray  # card-present kinds, merchants tied to a city
    kind_mu: np.ndarray
    kind_sigma: np.ndarray
    kind_profile: np.ndarray
    kind_dow: np.ndarray
    kind_mcc: tuple[str, ...]
    profile_cdf: np.ndarray
    rate: np.ndarray  # per currency, units per euro
    slot_kind: np.ndarray
    slot_usage: np.ndarray


def _haversine_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def _tables() -> _Tables:
    codes = tuple(c[0] for c in _COUNTRY_TABLE)
    country_currency = np.array([CURRENCIES.index(c[1]) for c in _COUNTRY_TABLE], np.int8)
    country_weight = np.array([c[2] for c in _COUNTRY_TABLE])
    country_weight /= country_weight.sum()
    city_country = np.array([codes.index(c[0]) for c in _CITY_TABLE], np.int16)
    city_lat = np.array([c[1] for c in _CITY_TABLE])
    city_lon = np.array([c[2] for c in _CITY_TABLE])
    city_tz_ms = np.array([int(c[4] * MS_PER_HOUR) for c in _CITY_TABLE], np.int64)
    city_weight = np.array([c[3] for c in _CITY_TABLE]) * country_weight[city_country]
    city_weight /= city_weight.sum()
    main_city = np.array([int(np.flatnonzero(city_country == i)[0]) for i in range(len(codes))])
    dist = _haversine_km(city_lat[:, None], city_lon[:, None], city_lat[None, :], city_lon[None, :])
    cdf = np.empty((len(_PROFILES), 2, 24))
    for i, rows in enumerate(_PROFILES.values()):
        for w in (0, 1):
            p = np.asarray(rows[w], float)
            cdf[i, w] = np.cumsum(p) / p.sum()
            cdf[i, w, -1] = 1.0
    slot_kind = np.array([k for k, kind in enumerate(_KINDS) for _ in range(kind.slots)], np.int16)
    slot_usage = np.array([_KINDS[k].usage / _KINDS[k].slots for k in slot_kind])
    return _Tables(
        country_codes=codes,
        country_currency=country_currency,
        country_weight=country_weight,
        country_main_city=main_city,
        n_home_countries=int(np.count_nonzero(country_weight > 0)),
        city_country=city_country,
        city_lat=city_lat,
        city_lon=city_lon,
        city_tz_ms=city_tz_ms,
        city_weight=city_weight,
        far=dist > _FAR_KM,
        kind_channel=np.array([k.channel for k in _KINDS], np.int8),
        kind_local=np.array([k.channel in (_POS, _ATM) for k in _KINDS]),
        kind_mu=np.log([k.median_eur for k in _KINDS]),
        kind_sigma=np.array([k.sigma for k in _KINDS]),
        kind_profile=np.array([_PROFILE_NAMES.index(k.profile) for k in _KINDS], np.int8),
        kind_dow=np.array([k.dow for k in _KINDS], float),
        kind_mcc=tuple(k.mcc for k in _KINDS),
        profile_cdf=cdf,
        rate=np.array([EUR_RATES[c] for c in CURRENCIES]),
        slot_kind=slot_kind,
        slot_usage=slot_usage,
    )


_T = _tables()

# --------------------------------------------------------------------------------------------
# Merchant population
# --------------------------------------------------------------------------------------------


class _Merchants(NamedTuple):
    kind: np.ndarray  # int16
    city: np.ndarray  # int16, -1 for merchants without a physical point of sale
    country: np.ndarray  # int16
    lat: np.ndarray
    lon: np.ndarray
    number: np.ndarray  # public id number (a permutation)
    group_start: np.ndarray  # per (kind, place) group, see _group_index
    group_size: np.ndarray


def _group_index(kind: np.ndarray, city: np.ndarray, country: np.ndarray) -> np.ndarray:
    """Group of a merchant kind at a place: per city for card-present kinds, else per country."""
    n_cities, n_countries = len(_CITY_TABLE), len(_COUNTRY_TABLE)
    kind = kind.astype(np.int64)
    local = kind * n_cities + city
    national = len(_KINDS) * n_cities + kind * n_countries + country
    return np.where(_T.kind_local[kind], local, national)


def _minimum_merchants() -> int:
    return int(np.count_nonzero(_group_weights() > 0))


def _group_weights() -> np.ndarray:
    """Relative merchant count of every group; 0 for groups that have no merchants."""
    n_cities, n_countries = len(_CITY_TABLE), len(_COUNTRY_TABLE)
    share = np.array([k.merchant_share for k in _KINDS])
    local = share[:, None] * _T.city_weight[None, :]
    abroad = np.array([k.abroad for k in _KINDS])
    fraud_city = _T.city_weight == 0
    local[np.ix_(abroad, fraud_city)] = share[abroad, None] * 2e-4
    local[~_T.kind_local] = 0.0
    national = share[:, None] * np.where(_T.country_weight > 0, _T.country_weight, 0.0)[None, :]
    national[_T.kind_local] = 0.0
    assert local.shape == (len(_KINDS), n_cities) and national.shape[1] == n_countries
    return np.concatenate([local.ravel(), national.ravel()])


def _build_merchants(n: int, rng: np.random.Generator) -> _Merchants:
    weight = _group_weights()
    present = weight > 0
    size = present.astype(np.int64)
    extra = n - int(size.sum())
    size += rng.multinomial(extra, weight / weight.sum())
    group = np.repeat(np.arange(weight.size), size)
    n_cities, n_countries = len(_CITY_TABLE), len(_COUNTRY_TABLE)
    n_local = len(_KINDS) * n_cities
    is_local = group < n_local
    kind = np.where(is_local, group // n_cities, (group - n_local) // n_countries).astype(np.int16)
    city = np.where(is_local, group % n_cities, -1).astype(np.int16)
    country = np.where(
        is_local, _T.city_country[np.maximum(city, 0)], (group - n_local) % n_countries
    ).astype(np.int16)
    # Points of sale within ~15 km of the city centre.
    r_km = np.minimum(np.abs(rng.normal(0.0, 6.0, n)), 15.0)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    c = np.maximum(city, 0)
    lat = _T.city_lat[c] + r_km * np.sin(angle) / 111.0
    lon = _T.city_lon[c] + r_km * np.cos(angle) / (111.0 * np.cos(np.radians(_T.city_lat[c])))
    lat = np.where(is_local, np.round(lat, 5), np.nan)
    lon = np.where(is_local, np.round(lon, 5), np.nan)
    start = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    return _Merchants(kind, city, country, lat, lon, rng.permutation(n), start, size)


def _pick_merchant(
    m: _Merchants, kind: np.ndarray, city: np.ndarray, country: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    group = _group_index(np.asarray(kind), np.asarray(city), np.asarray(country))
    if np.any(m.group_size[group] == 0):  # pragma: no cover - guarded by the tables
        raise AssertionError("merchant requested from an empty group")
    return K.pick_in_groups(group, rng.random(group.size), m.group_start, m.group_size)


# --------------------------------------------------------------------------------------------
# Cards and users
# --------------------------------------------------------------------------------------------


class _Cards(NamedTuple):
    n: int
    user: np.ndarray  # int32, -1 when unknown
    n_users: int
    home_city: np.ndarray
    home_country: np.ndarray
    currency: np.ndarray
    level: np.ndarray  # spending level, mean 1
    rate: np.ndarray  # transactions per day
    dev: np.ndarray  # (cards, 2) device indices
    n_devices: int
    device_number: np.ndarray  # public id number of each device index
    slot_weight: np.ndarray
    slot_merchant: np.ndarray
    trip: np.ndarray  # bool
    trip_city: np.ndarray
    trip_times: np.ndarray  # (cards, 4): depart, arrive, depart back, arrive back (ms offsets)


def _assign_users(
    cards: int, users_per_card: float, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Owner of every card: each user owns at least one card, owners of several own 2 or 3."""
    n_users = min(cards, max(1, round(users_per_card * cards)))
    extra = cards - n_users
    pool = math.ceil(extra / 1.25)
    if extra == 0:
        owners = np.arange(n_users)
    elif pool <= n_users:
        multi = rng.choice(n_users, size=pool, replace=False)
        owners = np.concatenate([np.arange(n_users), multi, multi[: extra - pool]])
    else:
        owners = np.concatenate([np.arange(n_users), rng.integers(0, n_users, extra)])
    return rng.permutation(owners).astype(np.int32), n_users


def _build_cards(
    cards: int, days: int, users_per_card: float, m: _Merchants, rng: np.random.Generator
) -> _Cards:
    owner, n_users = _assign_users(cards, users_per_card, rng)
    user_city = rng.choice(len(_CITY_TABLE), size=n_users, p=_T.city_weight).astype(np.int16)
    user_known = rng.random(n_users) >= 0.05
    user_devices = np.where(rng.random(n_users) < 0.4, 2, 1)
    first_device = np.concatenate([[0], np.cumsum(user_devices)[:-1]])
    n_devices = int(user_devices.sum())
    home_city = user_city[owner]
    home_country = _T.city_country[home_city]
    dev = np.stack([first_device[owner], first_device[owner] + user_devices[owner] - 1], axis=1)
    level = rng.lognormal(-0.5 * 0.45**2, 0.45, cards)
    rate = rng.gamma(1.6, 3.0 / 1.6, cards)

    n_slots = _T.slot_kind.size
    uses_kind = rng.random((cards, len(_KINDS))) < np.array([k.keep for k in _KINDS])
    uses_kind[:, _K_GROCERY] = True
    weight = _T.slot_usage[None, :] * rng.gamma(1.5, 1 / 1.5, (cards, n_slots))
    weight *= uses_kind[:, _T.slot_kind]
    slot_kind = np.broadcast_to(_T.slot_kind, (cards, n_slots)).ravel()
    slot_merchant = _pick_merchant(
        m, slot_kind, np.repeat(home_city, n_slots), np.repeat(home_country, n_slots), rng
    ).reshape(cards, n_slots)

    # Trips abroad: about one a year, 2 to 9 days, mostly to another country.
    trip = rng.random(cards) < -np.expm1(-days / 365.0)
    home_w = _T.city_weight.copy()
    dest = rng.choice(len(_CITY_TABLE), size=cards, p=home_w)
    same = (dest == home_city) | (
        (_T.city_country[dest] == home_country) & (rng.random(cards) < 0.8)
    )
    for _ in range(8):  # redraw collisions, vectorised
        if not same.any():
            break
        dest[same] = rng.choice(len(_CITY_TABLE), size=int(same.sum()), p=home_w)
        same = (dest == home_city) | (
            (_T.city_country[dest] == home_country) & (rng.random(cards) < 0.8)
        )
    trip &= dest != home_city
    km = _haversine_km(
        _T.city_lat[home_city], _T.city_lon[home_city], _T.city_lat[dest], _T.city_lon[dest]
    )
    travel = ((km / 800.0 + 1.5) * MS_PER_HOUR).astype(np.int64)
    depart = rng.integers(0, days, cards) * MS_PER_DAY + rng.integers(
        6 * MS_PER_HOUR, 20 * MS_PER_HOUR, cards
    )
    back = (
        depart + rng.integers(2, 10, cards) * MS_PER_DAY + rng.integers(-6, 7, cards) * MS_PER_HOUR
    )
    trip_times = np.stack([depart, depart + travel, back, back + travel], axis=1)
    return _Cards(
        n=cards,
        user=np.where(user_known[owner], owner, -1).astype(np.int32),
        n_users=n_users,
        home_city=home_city,
        home_country=home_country,
        currency=_T.country_currency[home_country],
        level=level,
        rate=rate,
        dev=dev.astype(np.int32),
        n_devices=n_devices,
        device_number=rng.permutation(n_devices),
        slot_weight=weight,
        slot_merchant=slot_merchant,
        trip=trip,
        trip_city=dest.astype(np.int16),
        trip_times=trip_times,
    )


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


class _Rows(NamedTuple):
    card: np.ndarray  # int32
    ts: np.ndarray  # int64 ms since the start
    merchant: np.ndarray  # int32
    country: np.ndarray  # int16, -1 = absent
    lat: np.ndarray  # NaN = absent
    lon: np.ndarray
    device: np.ndarray  # int32, -1 = absent
    amount: np.ndarray  # in currency units, 2 decimals
    currency: np.ndarray  # int8
    scenario: np.ndarray  # int8


def _concat(parts: list[_Rows]) -> _Rows:
    return _Rows(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))


def _subset(rows: _Rows, mask: np.ndarray) -> _Rows:
    return _Rows(*(col[mask] for col in rows))


def _convert(eur: np.ndarray, currency: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Euro amounts to the transaction currency, 2 decimals; ATM withdrawals in round notes."""
    amount = eur * _T.rate[currency]
    note = np.where(_T.rate[currency] > 5, 100.0, 20.0)
    atm = _T.kind_channel[kind] == _ATM
    cash = np.minimum(amount, 1000.0 * _T.rate[currency])  # daily withdrawal limit
    amount = np.where(atm, np.maximum(np.round(cash / note), 1) * note, amount)
    return np.maximum(np.round(amount, 2), 0.01)


def _local_currency(country: np.ndarray) -> np.ndarray:
    return _T.country_currency[country]


def _lognormal_eur(kind: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.exp(_T.kind_mu[kind] + _T.kind_sigma[kind] * rng.standard_normal(kind.size))


def _place(
    m: _Merchants,
    c: _Cards,
    card: np.ndarray,
    merchant: np.ndarray,
    here: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Country, coordinates, device and currency of legitimate-looking transactions.

    Card-present transactions take the terminal's place and local currency; card-not-present
    ones carry the IP country of the cardholder's current city (``here``), coarse coordinates
    for some, the cardholder's device, and the card's currency.
    """
    n = card.size
    kind = m.kind[merchant]
    channel = _T.kind_channel[kind]
    present = (channel == _POS) | (channel == _ATM)
    online = (channel == _ECOM) | (channel == _TRANSFER)
    country = np.where(present, m.country[merchant], _T.city_country[here]).astype(np.int16)
    country[online & (rng.random(n) < 0.02)] = -1
    geo = online & (country >= 0) & (rng.random(n) < 0.35)
    lat = np.where(present, m.lat[merchant], np.where(geo, np.round(_T.city_lat[here], 2), np.nan))
    lon = np.where(present, m.lon[merchant], np.where(geo, np.round(_T.city_lon[here], 2), np.nan))
    second = rng.random(n) < 0.25
    device = np.where(online, c.dev[card, second.astype(np.int64)], -1).astype(np.int32)
    currency = np.where(present, _local_currency(np.maximum(country, 0)), c.currency[card]).astype(
        np.int8
    )
    return country, lat, lon, device, currency


class _Clock(NamedTuple):
    """Calendar of the simulated period.

    Internal times are milliseconds since the start of the period. Day ``d`` is the UTC day
    ``d`` days after the start's date; when the start is not at midnight, the period reaches
    into day ``days``.
    """

    days: int  # length of the period
    n_days: int  # calendar days touched by the period
    shift: int  # ms from the start date's UTC midnight to the start
    dow: np.ndarray  # day of week per calendar day (0 = Monday)
    dom: np.ndarray  # day of month per calendar day

    @property
    def span(self) -> int:
        return self.days * MS_PER_DAY

    def at(self, day: np.ndarray, local_ms: np.ndarray, tz_ms: np.ndarray) -> np.ndarray:
        """Period offsets of a local time of day on calendar days in the given time zones."""
        return day * MS_PER_DAY + local_ms - tz_ms - self.shift

    def clip(self, t: np.ndarray, span: np.ndarray | int = 0) -> np.ndarray:
        """Move start times so that ``[t, t + span]`` lies in the period.

        Times are moved by whole days where possible, keeping their time of day, and only
        clipped when the period is too short for that.
        """
        span = np.asarray(span, np.int64)
        over = np.maximum(t + span - (self.span - 1), 0)
        t = t - -(-over // MS_PER_DAY) * MS_PER_DAY
        t = t + -(-np.maximum(-t, 0) // MS_PER_DAY) * MS_PER_DAY
        return np.clip(t, 0, np.maximum(self.span - 1 - span, 0))


def _clock(start_date: np.datetime64, shift: int, days: int) -> _Clock:
    n_days = days + (1 if shift else 0)
    calendar = start_date + np.arange(n_days)
    dow = ((calendar.astype(np.int64) + 3) % 7).astype(np.int8)  # 1970-01-01 was a Thursday
    dom = (calendar - calendar.astype("datetime64[M]")).astype(np.int64) + 1
    return _Clock(days, n_days, shift, dow, dom)


def _normal_rows(
    c: _Cards, m: _Merchants, clock: _Clock, rng: np.random.Generator
) -> tuple[_Rows, np.ndarray]:
    """Legitimate activity. Returns the rows and each card's mean amount in euro."""
    span = clock.span
    counts = rng.poisson(c.rate * clock.n_days)
    card = np.repeat(np.arange(c.n, dtype=np.int32), counts)
    n = card.size
    dow_of_day = clock.dow
    day_cdf = np.cumsum(_DAY_VOLUME[dow_of_day])
    day_cdf /= day_cdf[-1]
    day = np.minimum(np.searchsorted(day_cdf, rng.random(n), side="right"), clock.n_days - 1)
    # Day-major order keeps the final sort by time, and every gather after it, cache-friendly.
    by_day = np.argsort(day.astype(np.int16 if clock.n_days < 2**15 else np.int64), kind="stable")
    card, day = card[by_day], day[by_day]
    dow = dow_of_day[day].astype(np.int8)
    slot = K.sample_slots(card, dow, rng.random(n), c.slot_weight, _T.slot_kind, _T.kind_dow)
    merchant = c.slot_merchant[card, slot]
    kind = _T.slot_kind[slot]
    explore = np.flatnonzero(rng.random(n) < 0.1)
    ec = card[explore]
    merchant[explore] = _pick_merchant(m, kind[explore], c.home_city[ec], c.home_country[ec], rng)
    weekend = (dow >= 5).astype(np.int8)
    tod = K.sample_time_of_day(
        _T.kind_profile[kind], weekend, rng.random(n), rng.random(n), _T.profile_cdf
    )
    ts = clock.at(day, tod, _T.city_tz_ms[c.home_city[card]])
    here = c.home_city[card].copy()

    # Trips: nothing while travelling, local merchants and IP country while away.
    on_trip = c.trip[card]
    times = c.trip_times[card[on_trip]]
    t = ts[on_trip]
    transit = ((t >= times[:, 0]) & (t < times[:, 1])) | ((t >= times[:, 2]) & (t < times[:, 3]))
    away = (t >= times[:, 1]) & (t < times[:, 2])
    idx = np.flatnonzero(on_trip)
    away_idx = idx[away]
    dest = c.trip_city[card[away_idx]]
    here[away_idx] = dest
    local = away_idx[_T.kind_local[kind[away_idx]]]
    merchant[local] = _pick_merchant(
        m, kind[local], c.trip_city[card[local]], _T.city_country[c.trip_city[card[local]]], rng
    )
    keep = np.ones(n, bool)
    keep[idx[transit]] = False
    keep &= (ts >= 0) & (ts < span)

    card, ts, merchant, kind, here = card[keep], ts[keep], merchant[keep], kind[keep], here[keep]
    n = card.size
    country, lat, lon, device, currency = _place(m, c, card, merchant, here, rng)
    eur = _lognormal_eur(kind, rng) * c.level[card]
    amount = _convert(eur, currency, kind)
    rows = _Rows(
        card, ts, merchant, country, lat, lon, device, amount, currency, np.zeros(n, np.int8)
    )
    total = np.bincount(card, weights=eur, minlength=c.n)
    seen = np.bincount(card, minlength=c.n)
    mean_eur = np.where(seen > 0, total / np.maximum(seen, 1), 30.0 * c.level)
    return _concat([rows, _subscription_rows(c, m, clock, rng)]), mean_eur


def _subscription_rows(c: _Cards, m: _Merchants, clock: _Clock, rng: np.random.Generator) -> _Rows:
    """Monthly subscriptions billed at night on a fixed day of the month."""
    per_card = rng.choice(4, size=c.n, p=[0.30, 0.35, 0.25, 0.10])
    card = np.repeat(np.arange(c.n, dtype=np.int32), per_card)
    n_subs = card.size
    kind = np.where(rng.random(n_subs) < 0.6, _K_STREAMING, _K_MEDIA).astype(np.int16)
    merchant = _pick_merchant(m, kind, c.home_city[card], c.home_country[card], rng)
    billing_day = rng.integers(1, 29, n_subs)
    billed_at = rng.integers(1 * MS_PER_HOUR, 6 * MS_PER_HOUR, n_subs)
    currency = c.currency[card]
    price = _SUBSCRIPTION_PRICES[rng.integers(0, _SUBSCRIPTION_PRICES.size, n_subs)]
    local_price = price * _T.rate[currency]
    local_price = np.where(_T.rate[currency] == 1.0, price, np.round(local_price) - 0.01)

    dom = clock.dom
    order = np.argsort(dom, kind="stable")  # period days grouped by day of month
    per_dom = np.bincount(dom, minlength=32)
    first = np.concatenate([[0], np.cumsum(per_dom)[:-1]])
    reps = per_dom[billing_day]
    sub = np.repeat(np.arange(n_subs), reps)
    nth = K.segment_cumsum(np.ones(sub.size, np.int64), reps)
    day = order[first[billing_day[sub]] + nth]
    card_r = card[sub]
    ts = clock.at(day, billed_at[sub], _T.city_tz_ms[c.home_city[card_r]])
    ok = (ts >= 0) & (ts < clock.span)
    n = sub.size
    return _subset(
        _Rows(
            card_r,
            ts,
            merchant[sub],
            c.home_country[card_r].astype(np.int16),
            np.full(n, np.nan),
            np.full(n, np.nan),
            np.full(n, -1, np.int32),
            np.round(local_price[sub], 2),
            currency[sub].astype(np.int8),
            np.zeros(n, np.int8),
        ),
        ok,
    )


# --------------------------------------------------------------------------------------------
# Fraud
# --------------------------------------------------------------------------------------------


class _Victims:
    """Hands out victim cards, preferring cards that carry no fraud yet."""

    def __init__(self, n_cards: int, rng: np.random.Generator) -> None:
        self.used = np.zeros(n_cards, bool)
        self.rng = rng

    def take(self, k: int, eligible: np.ndarray | None = None) -> np.ndarray:
        n = self.used.size
        ok = np.ones(n, bool) if eligible is None else eligible
        free = np.flatnonzero(ok & ~self.used)
        if free.size >= k:
            pick = self.rng.choice(free, size=k, replace=False)
        else:
            base = np.flatnonzero(ok)
            if base.size == 0:
                base = np.arange(n)
            pick = self.rng.permutation(
                np.concatenate([free, self.rng.choice(base, size=k - free.size)])
            )
        self.used[pick] = True
        return pick.astype(np.int32)


def _fill(budget: int, draw: Callable[[int], np.ndarray], mean: float) -> np.ndarray:
    """Unit sizes drawn until they cover ``budget`` rows; the last one is cut to fit exactly."""
    if budget <= 0:
        return np.zeros(0, np.int64)
    sizes = np.zeros(0, np.int64)
    while sizes.sum() < budget:
        sizes = np.concatenate([sizes, draw(int(budget / mean) + 4).astype(np.int64)])
    cs = np.cumsum(sizes)
    last = int(np.searchsorted(cs, budget))
    sizes = sizes[: last + 1].copy()
    sizes[-1] -= cs[last] - budget
    return sizes


def _offsets(sizes: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row offsets within each unit (first row 0) and each unit's span."""
    off = K.segment_cumsum(gaps.astype(np.int64), sizes)
    span = np.zeros(sizes.size, np.int64)
    busy = sizes > 0
    span[busy] = off[(np.cumsum(sizes) - 1)[busy]]
    return off, span


def _fraud_starts(
    span: np.ndarray, tz_ms: np.ndarray, clock: _Clock, rng: np.random.Generator
) -> np.ndarray:
    """Start times of fraud bursts (night-leaning rhythm) that keep each burst in the period."""
    n = span.size
    tod = K.sample_time_of_day(
        np.full(n, _FRAUD_PROFILE, np.int8),
        np.zeros(n, np.int8),
        rng.random(n),
        rng.random(n),
        _T.profile_cdf,
    )
    return clock.clip(clock.at(rng.integers(0, clock.n_days, n), tod, tz_ms), span)


def _foreign_country(home: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A country other than ``home``: mostly fraud-only countries, otherwise another home one."""
    n = home.size
    n_home = _T.n_home_countries
    far = rng.integers(n_home, len(_COUNTRY_TABLE), n)
    near = rng.choice(n_home, size=n, p=_T.country_weight[:n_home])
    pick = np.where((rng.random(n) < 0.3) & (near != home), near, far)
    return pick.astype(np.int16)


def _choice(options: list[int], p: list[float], n: int, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(options, np.int16)[rng.choice(len(options), size=n, p=p)]


def _card_testing(
    budget: int,
    c: _Cards,
    m: _Merchants,
    clock: _Clock,
    pool: _Victims,
    dev_next: list[int],
    rng: np.random.Generator,
) -> tuple[_Rows, np.ndarray, np.ndarray]:
    """Bursts of tiny card-not-present authorisations.

    Returns the rows and, for single-card bursts, the victim cards and burst end times.
    """
    single = round(0.8 * budget)
    parts = []
    # One card, one merchant, 5-30 attempts a few seconds apart.
    sizes = _fill(single, lambda k: rng.integers(5, 31, k), 17.5)
    units = sizes.size
    victims = pool.take(units)
    gaps = 2_000 + rng.exponential(20_000, int(sizes.sum()))
    off, span = _offsets(sizes, gaps)
    t0 = _fraud_starts(span, _T.city_tz_ms[c.home_city[victims]], clock, rng)
    unit_kind = _choice(
        [_K_CHARITY, _K_GAMES, _K_MEDIA, _K_MARKET], [0.35, 0.3, 0.2, 0.15], units, rng
    )
    unit_country = rng.choice(
        _T.n_home_countries, size=units, p=_T.country_weight[: _T.n_home_countries]
    )
    unit_merchant = _pick_merchant(m, unit_kind, np.zeros(units, np.int64), unit_country, rng)
    n_dev = max(1, units // 3)
    unit_device = dev_next[0] + rng.integers(0, n_dev, units)
    dev_next[0] += n_dev
    ip = _foreign_country(c.home_country[victims], rng)
    ip[rng.random(units) < 0.35] = -1
    parts.append(_testing_rows(sizes, victims, t0, off, unit_merchant, ip, unit_device, c, rng))
    ends = t0 + span

    # Many cards at one merchant within an hour or so.
    per_card = _fill(budget - single, lambda k: rng.integers(1, 4, k), 2.0)
    if per_card.size:
        inst_size = rng.integers(10, 41, per_card.size)
        inst = np.searchsorted(np.cumsum(inst_size), np.arange(per_card.size), side="right")
        n_inst = int(inst.max()) + 1
        atk_victims = pool.take(per_card.size)
        i_kind = _choice([_K_CHARITY, _K_GAMES, _K_MEDIA], [0.5, 0.3, 0.2], n_inst, rng)
        i_country = rng.choice(
            _T.n_home_countries, size=n_inst, p=_T.country_weight[: _T.n_home_countries]
        )
        i_merchant = _pick_merchant(m, i_kind, np.zeros(n_inst, np.int64), i_country, rng)
        i_device = dev_next[0] + np.arange(n_inst)
        dev_next[0] += n_inst
        i_ip = _foreign_country(np.full(n_inst, -1, np.int16), rng)
        i_ip[rng.random(n_inst) < 0.35] = -1
        window = rng.integers(15, 91, n_inst) * MS_PER_MINUTE
        i_t0 = _fraud_starts(window + 10 * MS_PER_MINUTE, np.zeros(n_inst, np.int64), clock, rng)
        gaps = 3_000 + rng.exponential(30_000, int(per_card.sum()))
        off, _ = _offsets(per_card, gaps)
        t0 = i_t0[inst] + (rng.random(per_card.size) * window[inst]).astype(np.int64)
        parts.append(
            _testing_rows(
                per_card, atk_victims, t0, off, i_merchant[inst], i_ip[inst], i_device[inst], c, rng
            )
        )
    return _concat(parts), victims, ends


def _testing_rows(
    sizes: np.ndarray,
    victims: np.ndarray,
    t0: np.ndarray,
    off: np.ndarray,
    merchant: np.ndarray,
    ip: np.ndarray,
    device: np.ndarray,
    c: _Cards,
    rng: np.random.Generator,
) -> _Rows:
    n = int(sizes.sum())
    card = np.repeat(victims, sizes)
    currency = c.currency[card].astype(np.int8)
    common = np.array([0.01, 0.10, 0.50, 1.00, 1.50])
    amount = np.where(
        rng.random(n) < 0.4,
        common[rng.integers(0, common.size, n)],
        np.round(rng.uniform(0.01, 1.99, n), 2),
    )
    return _Rows(
        card,
        np.repeat(t0, sizes) + off,
        np.repeat(merchant, sizes).astype(np.int32),
        np.repeat(ip, sizes).astype(np.int16),
        np.full(n, np.nan),
        np.full(n, np.nan),
        np.repeat(device, sizes).astype(np.int32),
        np.maximum(amount, 0.01),
        currency,
        np.full(n, _TESTING, np.int8),
    )


def _account_takeover(
    budget: int,
    c: _Cards,
    m: _Merchants,
    clock: _Clock,
    pool: _Victims,
    dev_next: list[int],
    tested: np.ndarray,
    tested_end: np.ndarray,
    rng: np.random.Generator,
) -> _Rows:
    """New device and country, then a burst of high-value resalable purchases."""
    sizes = _fill(budget, lambda k: rng.integers(3, 13, k), 7.5)
    units = sizes.size
    if units == 0:
        return _empty_rows()
    gaps = 30_000 + rng.exponential(6 * MS_PER_MINUTE, int(sizes.sum()))
    off, span = _offsets(sizes, gaps)
    n_chain = min(tested.size, round(0.5 * units))
    chain = rng.choice(tested.size, size=n_chain, replace=False)
    victims = np.concatenate([tested[chain], pool.take(units - n_chain)]).astype(np.int32)
    t0 = _fraud_starts(span, _T.city_tz_ms[c.home_city[victims]], clock, rng)
    delay = rng.integers(30 * MS_PER_MINUTE, 48 * MS_PER_HOUR, n_chain)
    t0[:n_chain] = clock.clip(tested_end[chain] + delay, span[:n_chain])
    n_dev = max(1, math.ceil(units * 0.6))
    device = dev_next[0] + rng.integers(0, n_dev, units)
    dev_next[0] += n_dev
    ip = _foreign_country(c.home_country[victims], rng)
    geo = rng.random(units) < 0.4
    ip_city = _T.country_main_city[ip]

    card = np.repeat(victims, sizes)
    n = card.size
    kind = _choice(
        [_K_ELECTRONICS_ONLINE, _K_GIFTCARDS, _K_GAMES, _K_TRANSFER, _K_CRYPTO],
        [0.35, 0.25, 0.15, 0.15, 0.10],
        n,
        rng,
    )
    merchant = _pick_merchant(m, kind, c.home_city[card], c.home_country[card], rng)
    eur = np.clip(rng.lognormal(np.log(450.0), 0.6, n), 60.0, 5000.0)
    gift = np.array([50.0, 100.0, 150.0, 200.0, 250.0, 500.0])
    eur = np.where(kind == _K_GIFTCARDS, gift[rng.integers(0, gift.size, n)], eur)
    currency = c.currency[card].astype(np.int8)
    geo_r = np.repeat(geo, sizes)
    city_r = np.repeat(ip_city, sizes)
    return _Rows(
        card,
        np.repeat(t0, sizes) + off,
        merchant,
        np.repeat(ip, sizes),
        np.where(geo_r, np.round(_T.city_lat[city_r], 2), np.nan),
        np.where(geo_r, np.round(_T.city_lon[city_r], 2), np.nan),
        np.repeat(device, sizes).astype(np.int32),
        _convert(eur, currency, kind),
        currency,
        np.full(n, _TAKEOVER, np.int8),
    )


def _impossible_travel(
    budget: int,
    c: _Cards,
    m: _Merchants,
    clock: _Clock,
    pool: _Victims,
    normal: _Rows,
    rng: np.random.Generator,
) -> _Rows:
    """Card-present use far away within an hour of a card-present transaction at home."""
    sizes = _fill(budget, lambda k: rng.integers(2, 7, k), 4.0)
    units = sizes.size
    if units == 0:
        return _empty_rows()
    kind_n = m.kind[normal.merchant]
    channel = _T.kind_channel[kind_n]
    at_home = ((channel == _POS) | (channel == _ATM)) & ~c.trip[normal.card]
    anchor_rows = np.flatnonzero(at_home)
    anchor_rows = anchor_rows[np.argsort(normal.card[anchor_rows], kind="stable")]
    anchor_card = normal.card[anchor_rows]
    per_card = np.bincount(anchor_card, minlength=c.n)
    victims = pool.take(units, per_card > 0)
    lo = np.searchsorted(anchor_card, victims, side="left")
    cnt = per_card[victims]
    has = cnt > 0
    pick = (
        anchor_rows[
            np.minimum(lo + (rng.random(units) * cnt).astype(np.int64), anchor_rows.size - 1)
        ]
        if anchor_rows.size
        else None
    )
    if pick is None:
        t_home = rng.integers(0, clock.span, units)
    else:
        t_home = np.where(has, normal.ts[pick], rng.integers(0, clock.span, units))

    # A far city for each victim.
    far = _T.far[c.home_city[victims]]
    u = rng.random((units, far.shape[1])) * far
    city = np.argmax(u, axis=1)

    gaps = rng.integers(3 * MS_PER_MINUTE, 40 * MS_PER_MINUTE, int(sizes.sum()))
    off, span = _offsets(sizes, gaps)
    first = rng.integers(5 * MS_PER_MINUTE, 60 * MS_PER_MINUTE, units)
    end = clock.span
    after = t_home + first + span < end
    t0 = np.where(after, t_home + first, t_home - first - span)
    t0 = clock.clip(t0, span)

    card = np.repeat(victims, sizes)
    n = card.size
    city_r = np.repeat(city, sizes)
    kind = _choice(
        [_K_ATM, _K_ELECTRONICS, _K_JEWELLERY, _K_GROCERY, _K_RESTAURANT],
        [0.35, 0.25, 0.15, 0.1, 0.15],
        n,
        rng,
    )
    merchant = _pick_merchant(m, kind, city_r, _T.city_country[city_r], rng)
    country = m.country[merchant]
    currency = _local_currency(country).astype(np.int8)
    eur = _lognormal_eur(kind, rng) * 1.8 * c.level[card]
    return _Rows(
        card,
        np.repeat(t0, sizes) + off,
        merchant,
        country,
        m.lat[merchant],
        m.lon[merchant],
        np.full(n, -1, np.int32),
        _convert(eur, currency, kind),
        currency,
        np.full(n, _TRAVEL, np.int8),
    )


def _compromised_merchant(
    budget: int,
    c: _Cards,
    m: _Merchants,
    clock: _Clock,
    pool: _Victims,
    dev_next: list[int],
    rng: np.random.Generator,
) -> _Rows:
    """A point of sale where many local cards are defrauded over several days.

    Each victim has one to three fraudulent transactions at the compromised merchant and, for
    most victims, a card-not-present cash-out elsewhere a few days after the merchant's window.
    """
    if budget <= 0:
        return _empty_rows()
    at_merchant = rng.integers(1, 4, budget)
    later = np.where(rng.random(budget) < 0.7, rng.integers(3, 9, budget), 0)
    sizes = at_merchant + later
    cs = np.cumsum(sizes)
    units = int(np.searchsorted(cs, budget)) + 1
    at_merchant, later = at_merchant[:units].copy(), later[:units].copy()
    excess = int(cs[units - 1]) - budget
    cut = min(excess, int(later[-1]))
    later[-1] -= cut
    at_merchant[-1] -= excess - cut

    inst_size = rng.integers(8, 31, units)
    inst = np.searchsorted(np.cumsum(inst_size), np.arange(units), side="right")
    n_inst = int(inst.max()) + 1
    i_kind = _choice(
        [_K_FUEL, _K_RESTAURANT, _K_GROCERY, _K_FASTFOOD, _K_ATM],
        [0.3, 0.25, 0.2, 0.1, 0.15],
        n_inst,
        rng,
    )
    i_city = rng.choice(len(_CITY_TABLE), size=n_inst, p=_T.city_weight)
    i_merchant = _pick_merchant(m, i_kind, i_city, _T.city_country[i_city], rng)
    length = np.minimum(rng.integers(3, 11, n_inst), clock.n_days)
    first_day = rng.integers(0, clock.n_days - length + 1)

    victims = np.empty(units, np.int32)
    bounds = np.searchsorted(inst, np.arange(n_inst + 1))
    for i in range(n_inst):  # one victim draw per compromised merchant
        lo, hi = bounds[i], bounds[i + 1]
        victims[lo:hi] = pool.take(int(hi - lo), (c.home_city == i_city[i]) & ~c.trip)

    # Fraud at the merchant during its window.
    card = np.repeat(victims, at_merchant)
    n = card.size
    inst_r = np.repeat(inst, at_merchant)
    merchant = i_merchant[inst_r].astype(np.int32)
    kind = m.kind[merchant]
    day = first_day[inst_r] + (rng.random(n) * length[inst_r]).astype(np.int64)
    tod = K.sample_time_of_day(
        _T.kind_profile[kind], np.zeros(n, np.int8), rng.random(n), rng.random(n), _T.profile_cdf
    )
    ts = clock.clip(clock.at(day, tod, _T.city_tz_ms[m.city[merchant]]))
    country = m.country[merchant]
    currency = _local_currency(country).astype(np.int8)
    eur = _lognormal_eur(kind, rng) * 2.5 * c.level[card]
    visits = _Rows(
        card,
        ts,
        merchant,
        country,
        m.lat[merchant],
        m.lon[merchant],
        np.full(n, -1, np.int32),
        _convert(eur, currency, kind),
        currency,
        np.full(n, _COMPROMISED, np.int8),
    )

    # Cash-out of the skimmed cards online, after the merchant's window.
    gaps = MS_PER_MINUTE + rng.exponential(20 * MS_PER_MINUTE, int(later.sum()))
    off, span = _offsets(later, gaps)
    window_end = (first_day + length)[inst] * MS_PER_DAY - clock.shift
    t0 = window_end + rng.integers(MS_PER_HOUR, 5 * MS_PER_DAY, units)
    t0 = clock.clip(t0, span)
    device = dev_next[0] + inst
    dev_next[0] += n_inst
    ip = np.where(rng.random(units) < 0.5, c.home_country[victims], -1).astype(np.int16)
    foreign = ip < 0
    ip[foreign] = _foreign_country(c.home_country[victims[foreign]], rng)
    card = np.repeat(victims, later)
    n = card.size
    kind = _choice(
        [_K_ELECTRONICS_ONLINE, _K_GIFTCARDS, _K_MARKET, _K_GAMES], [0.35, 0.3, 0.2, 0.15], n, rng
    )
    merchant = _pick_merchant(m, kind, c.home_city[card], c.home_country[card], rng)
    currency = c.currency[card].astype(np.int8)
    eur = np.clip(rng.lognormal(np.log(220.0), 0.7, n), 20.0, 3000.0)
    cash_out = _Rows(
        card,
        np.repeat(t0, later) + off,
        merchant,
        np.repeat(ip, later),
        np.full(n, np.nan),
        np.full(n, np.nan),
        np.repeat(device, later).astype(np.int32),
        _convert(eur, currency, kind),
        currency,
        np.full(n, _COMPROMISED, np.int8),
    )
    return _concat([visits, cash_out])


def _amount_anomaly(
    budget: int,
    c: _Cards,
    m: _Merchants,
    clock: _Clock,
    pool: _Victims,
    mean_eur: np.ndarray,
    rng: np.random.Generator,
) -> _Rows:
    """Purchases 10-50 times the card's usual amount, otherwise ordinary-looking."""
    sizes = _fill(budget, lambda k: rng.integers(2, 5, k), 3.0)
    units = sizes.size
    if units == 0:
        return _empty_rows()
    victims = pool.take(units, ~c.trip)
    card = np.repeat(victims, sizes)
    n = card.size
    kind = _choice(
        [
            _K_ELECTRONICS,
            _K_ELECTRONICS_ONLINE,
            _K_JEWELLERY,
            _K_CLOTHING,
            _K_MARKET,
            _K_TRAVEL_PHONE,
        ],
        [0.25, 0.2, 0.15, 0.15, 0.15, 0.1],
        n,
        rng,
    )
    home = c.home_city[card]
    merchant = _pick_merchant(m, kind, home, c.home_country[card], rng)
    day = np.minimum(
        np.repeat(rng.integers(0, clock.n_days, units), sizes) + rng.integers(0, 3, n),
        clock.n_days - 1,
    )
    tod = K.sample_time_of_day(
        _T.kind_profile[kind], np.zeros(n, np.int8), rng.random(n), rng.random(n), _T.profile_cdf
    )
    ts = clock.clip(clock.at(day, tod, _T.city_tz_ms[home]))
    country, lat, lon, device, currency = _place(m, c, card, merchant, home, rng)
    eur = mean_eur[card] * rng.uniform(10.0, 50.0, n)
    return _Rows(
        card,
        ts,
        merchant,
        country,
        lat,
        lon,
        device,
        _convert(eur, currency, kind),
        currency,
        np.full(n, _AMOUNT, np.int8),
    )


def _empty_rows() -> _Rows:
    i32, f64 = np.zeros(0, np.int32), np.zeros(0)
    return _Rows(
        i32,
        np.zeros(0, np.int64),
        i32,
        np.zeros(0, np.int16),
        f64,
        f64,
        i32,
        f64,
        np.zeros(0, np.int8),
        np.zeros(0, np.int8),
    )


def _split_budget(total: int) -> np.ndarray:
    """Largest-remainder split of the fraud rows; every scenario gets one when possible."""
    raw = _SCENARIO_SHARE * total
    out = np.floor(raw).astype(np.int64)
    rest = total - int(out.sum())
    out[np.argsort(-(raw - out), kind="stable")[:rest]] += 1
    if total >= out.size:
        for i in np.flatnonzero(out == 0):
            out[i] += 1
            out[np.argmax(out)] -= 1
    return out


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _parse_start(start: str) -> tuple[int, int, np.datetime64]:
    """Epoch ms of the start, ms since its UTC midnight, and its UTC date."""
    try:
        when = datetime.fromisoformat(start)
    except ValueError as exc:
        raise ValueError(f"start must be an ISO-8601 date or date-time, got {start!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    start_ms = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    return start_ms, start_ms % MS_PER_DAY, np.datetime64(when.date(), "D")


def simulate(
    cards: int,
    days: int,
    seed: int = 0,
    *,
    fraud_rate: float = 0.005,
    start: str = "2026-01-01",
    merchants: int | None = None,
    users_per_card: float = 0.9,
) -> pa.Table:
    """Simulate labelled card transactions.

    Args:
        cards: Number of cards.
        days: Length of the simulated period in days.
        seed: Non-negative random seed; the same arguments always give the same table.
        fraud_rate: Share of fraudulent transactions, in ``[0, 0.5)``.
        start: Start of the period, an ISO-8601 date or date-time (UTC when no offset is given).
        merchants: Size of the merchant population, at least one merchant per merchant kind
            and place (705). Defaults to ``max(cards // 8, 705)``.
        users_per_card: Distinct users per card, in ``(0, 1]``. The remaining cards are second
            and third cards of existing users (or more cards per user below 0.45).

    Returns:
        A table sorted by ``timestamp`` with the columns ``transaction_id``, ``timestamp``
        (int64 epoch ms, UTC), ``card_id``, ``user_id``, ``amount``, ``currency``,
        ``merchant_id``, ``merchant_category``, ``country``, ``lat``, ``lon``, ``channel``,
        ``device_id``, ``label`` (int8) and ``scenario``.

    Raises:
        ValueError: If an argument is out of range.
    """
    if cards < 1 or days < 1:
        raise ValueError(f"cards and days must be at least 1, got cards={cards}, days={days}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not 0.0 <= fraud_rate < 0.5:
        raise ValueError(f"fraud_rate must be in [0, 0.5), got {fraud_rate}")
    if not 0.0 < users_per_card <= 1.0:
        raise ValueError(f"users_per_card must be in (0, 1], got {users_per_card}")
    minimum = _minimum_merchants()
    if merchants is None:
        merchants = max(cards // 8, minimum)
    elif merchants < minimum:
        raise ValueError(f"merchants must be at least {minimum} (one per kind and place)")
    start_ms, shift, start_date = _parse_start(start)
    seeds = np.random.SeedSequence(seed).spawn(9)
    rngs = [np.random.default_rng(s) for s in seeds]

    m = _build_merchants(merchants, rngs[0])
    c = _build_cards(cards, days, users_per_card, m, rngs[1])
    clock = _clock(start_date, shift, days)
    normal, mean_eur = _normal_rows(c, m, clock, rngs[2])

    n_fraud = round(fraud_rate * normal.card.size / (1.0 - fraud_rate))
    budget = _split_budget(n_fraud)
    victims = _Victims(cards, rngs[3])
    dev_next = [c.n_devices]
    testing, tested, tested_end = _card_testing(
        int(budget[0]), c, m, clock, victims, dev_next, rngs[4]
    )
    parts = [
        normal,
        testing,
        _account_takeover(
            int(budget[1]), c, m, clock, victims, dev_next, tested, tested_end, rngs[5]
        ),
        _impossible_travel(int(budget[2]), c, m, clock, victims, normal, rngs[6]),
        _compromised_merchant(int(budget[3]), c, m, clock, victims, dev_next, rngs[7]),
        _amount_anomaly(int(budget[4]), c, m, clock, victims, mean_eur, rngs[8]),
    ]
    rows = _concat(parts)
    fraud_devices = c.n_devices + rngs[3].permutation(dev_next[0] - c.n_devices)
    device_numbers = np.concatenate([c.device_number, fraud_devices])
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        order = K.argsort_time(rows.ts)
        rows = _Rows(*pool.map(lambda col: col[order], rows))
        return _to_table(rows, seed, start_ms, m, c, device_numbers, pool)


def _width(count: int) -> int:
    """Zero-padded width of identifiers numbered ``0 .. count - 1`` (at least 6 digits)."""
    return max(6, len(str(max(count - 1, 0))))


def _period_tag(start_ms: int) -> str:
    """``YYYYMMDD`` (plus ``THHMMSS`` unless midnight UTC) of the period start."""
    from datetime import UTC, datetime

    start = datetime.fromtimestamp(start_ms / 1000, UTC)
    fmt = "%Y%m%d" if start_ms % 86_400_000 == 0 else "%Y%m%dT%H%M%S"
    return start.strftime(fmt)


def _names(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _take(values: pa.Array | list[str] | tuple[str, ...], index: np.ndarray) -> pa.Array:
    """``values[index]`` as an Arrow array; negative indices become nulls."""
    arr = values if isinstance(values, pa.Array) else pa.array(list(values), pa.string())
    missing = index < 0
    idx = pa.array(
        np.where(missing, 0, index).astype(np.int64), mask=missing if missing.any() else None
    )
    return arr.take(idx)


def _to_table(
    rows: _Rows,
    seed: int,
    start_ms: int,
    m: _Merchants,
    c: _Cards,
    device_numbers: np.ndarray,
    pool: ThreadPoolExecutor,
) -> pa.Table:
    """Build the Arrow table from time-sorted rows (columns are built concurrently)."""
    n = rows.card.size
    kind = m.kind[rows.merchant]
    no_geo = np.isnan(rows.lat)
    builders: dict[str, Callable[[], pa.Array]] = {
        "transaction_id": lambda: _names(f"tx-{seed}-{_period_tag(start_ms)}-", np.arange(n), 1),
        "timestamp": lambda: pa.array(rows.ts + start_ms, pa.int64()),
        "card_id": lambda: _take(_names("card_", np.arange(c.n), _width(c.n)), rows.card),
        "user_id": lambda: _take(
            _names("user_", np.arange(c.n_users), _width(c.n_users)), c.user[rows.card]
        ),
        "amount": lambda: pa.array(rows.amount, pa.float64()),
        "currency": lambda: _take(CURRENCIES, rows.currency),
        "merchant_id": lambda: _take(
            _names("merch_", m.number, _width(m.number.size)), rows.merchant
        ),
        "merchant_category": lambda: _take(_T.kind_mcc, kind),
        "country": lambda: _take(_T.country_codes, rows.country),
        "lat": lambda: pa.array(rows.lat, pa.float64(), mask=no_geo),
        "lon": lambda: pa.array(rows.lon, pa.float64(), mask=no_geo),
        "channel": lambda: _take(CHANNELS, _T.kind_channel[kind]),
        "device_id": lambda: _take(
            _names("dev_", device_numbers, _width(device_numbers.size)), rows.device
        ),
        "label": lambda: pa.array((rows.scenario > 0).astype(np.int8), pa.int8()),
        "scenario": lambda: _take(SCENARIOS, rows.scenario),
    }
    arrays = list(pool.map(lambda build: build(), builders.values()))
    return pa.table(dict(zip(builders, arrays, strict=True)))


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


_JSON_CHUNK = 65_536


def _has_bytes(col: pa.Array, pattern: bytes) -> bool:
    """Whether the character data behind a string array contains any byte of ``pattern``.

    Looks at the whole data buffer, so a sliced array may report bytes outside the slice; the
    answer is only used to skip work, never to skip escaping that is needed.
    """
    data = col.buffers()[2]
    if data is None:
        return False
    raw = np.frombuffer(data, np.uint8)
    if pattern == b"":
        return bool((raw < 0x20).any())
    return any(bool((raw == byte).any()) for byte in pattern)


def _json_text(col: pa.Array) -> tuple[pa.Array, bool]:
    """JSON text of each value (null when absent) and whether it still needs double quotes."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.dictionary_decode()
        t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        col = pc.cast(col, pa.string())
        if _has_bytes(col, b""):  # control characters: let msgspec escape them
            return pa.array(
                [None if v is None else msgspec.json.encode(v).decode() for v in col.to_pylist()],
                pa.string(),
            ), False
        if _has_bytes(col, b'"\\'):
            col = pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')
        return col, True
    if pa.types.is_timestamp(t):
        col = pc.cast(pc.cast(col, pa.timestamp("ms", t.tz)), pa.int64())
        t = col.type
    if pa.types.is_boolean(t):
        return pc.if_else(col, "true", "false"), False
    if pa.types.is_integer(t):
        return pc.cast(col, pa.string()), False
    if pa.types.is_floating(t):
        col = pc.cast(col, pa.float64())
        text = pc.cast(col, pa.string())
        # Integral values print without a decimal point ("12"); keep them recognisably floats.
        bare = pc.and_(
            pc.invert(pc.match_substring(text, ".")), pc.invert(pc.match_substring(text, "e"))
        )
        text = pc.if_else(bare, pc.binary_join_element_wise(text, ".0", ""), text)
        return pc.if_else(pc.is_finite(col), text, pa.scalar(None, pa.string())), False
    raise TypeError(f"cannot encode a {t} column as JSON")


def _json_lines(table: pa.Table) -> tuple[bytes, np.ndarray]:
    """Encode every row as a JSON object; returns the bytes and the per-row offsets."""
    n = table.num_rows
    fields = [f for f in CONTRACT_FIELDS if f in table.column_names]
    datas, starts, ends, valid, quoted = [], [], [], [], []
    base = 0
    for name in fields:
        text, quote = _json_text(table.column(name).combine_chunks())
        offsets = np.frombuffer(text.buffers()[1], np.int32)[text.offset : text.offset + n + 1]
        lo, hi = int(offsets[0]), int(offsets[-1])
        chars = (
            np.frombuffer(text.buffers()[2], np.uint8)[lo:hi] if hi > lo else np.zeros(0, np.uint8)
        )
        datas.append(chars)
        starts.append(offsets[:-1].astype(np.int64) - lo + base)
        ends.append(offsets[1:].astype(np.int64) - lo + base)
        valid.append(text.is_valid().to_numpy(zero_copy_only=False))
        quoted.append(quote)
        base += hi - lo
    keys = [f'"{name}":'.encode() for name in fields]
    out, offsets = K.assemble_json(
        np.concatenate(datas),
        np.stack(starts, axis=1),
        np.stack(ends, axis=1),
        np.stack(valid, axis=1),
        np.array(quoted),
        np.frombuffer(b"".join(keys), np.uint8),
        np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int64),
    )
    return out.tobytes(), offsets


def iter_json_batches(table: pa.Table, batch_size: int = 8192) -> Iterator[list[bytes]]:
    """Encode a transaction table as contract events, batch by batch.

    Each event is one compact JSON object with the event-contract fields present in the table
    (see :data:`CONTRACT_FIELDS`; ``scenario`` and other columns are not part of the contract and
    are left out). Null values and non-finite numbers are omitted, the timestamp is written as
    epoch milliseconds. Events keep the table's row order.

    Args:
        table: A table with contract column names, e.g. from :func:`simulate`.
        batch_size: Events per yielded list.

    Yields:
        Lists of at most ``batch_size`` encoded events.

    Raises:
        ValueError: If ``batch_size`` is not positive.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    chunk = batch_size * max(1, _JSON_CHUNK // batch_size)
    for offset in range(0, table.num_rows, chunk):
        data, ends = _json_lines(table.slice(offset, chunk))
        bounds = ends.tolist()
        for lo in range(0, len(bounds) - 1, batch_size):
            hi = min(lo + batch_size, len(bounds) - 1)
            yield [data[bounds[i] : bounds[i + 1]] for i in range(lo, hi)]


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a transaction table, choosing the format from the file suffix.

    ``.jsonl`` and ``.json`` write JSON lines of contract events (as :func:`iter_json_batches`),
    ``.parquet`` writes Parquet (zstd) and ``.csv`` writes CSV with a header; the Parquet and CSV
    files keep every column.

    Args:
        table: The table to write.
        path: Destination file.

    Raises:
        ValueError: If the suffix is not one of the supported ones.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open("wb") as out:
            for batch in iter_json_batches(table):
                out.write(b"\n".join(batch))
                out.write(b"\n")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path, compression="zstd")
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    else:
        raise ValueError(
            f"unsupported output format {path.suffix or '(no suffix)'!r} for {path}: "
            "use .jsonl or .json (JSON lines), .parquet or .csv"
        )
