"""When a schedule runs: Azure ML's ``ScheduleRecurrence``, turned into a cron schedule.

Azure's semantics: ``frequency`` is Minute, Hour, Day, Week or Month and the schedule runs every
``interval`` of them. ``hours``/``minutes`` (or ``time_of_day``) pick the times of a Day or Week
schedule, ``week_days`` the days of a Week schedule; the first run is at or after ``start_time``
(in ``time_zone``), and Minute/Hour/Month schedules count their intervals from it.

Dagster runs a schedule on a cron expression. Where the recurrence is exactly a cron expression
(every 15 minutes, every 6 hours, daily at 09:30, Mondays and Fridays at 17:00, every 3 months)
that is the schedule's cron. Where it is not (every 7 minutes from 10:03, every 5 hours, every
2 days, every other week), the cron is the finest one that contains every wanted tick (every
minute, every hour, daily, weekly, monthly) and ``CronPlan.skip_reason`` skips the ticks between,
so "every 7 minutes from start_time" is exact.

Without ``start_time``, intervals that divide the hour (Minute) or the day (Hour) follow the
clock (every 15 minutes: :00, :15, :30, :45); all others count from the schedule's creation.
Times are whole minutes: a ``start_time`` with seconds starts at the next whole minute.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aml_assets.errors import AmlAssetsError

FREQUENCIES = ("Minute", "Hour", "Day", "Week", "Month")
WEEK_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CRON_WEEK_DAY = {day: (i + 1) % 7 for i, day in enumerate(WEEK_DAYS)}  # cron: Sunday = 0
_TIME_OF_DAY = re.compile(r"^(\d{1,2}):(\d{2})$")


class ScheduleError(AmlAssetsError):
    """A schedule, a data-change trigger or its recurrence is invalid, or its record unreadable."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems) or [message]
        super().__init__(message)


def _problems_error(what: str, problems: list[str]) -> ScheduleError:
    if len(problems) == 1:
        return ScheduleError(f"{what}: {problems[0]}", problems)
    lines = "\n".join(f"  - {p}" for p in problems)
    return ScheduleError(f"{what} has {len(problems)} problems:\n{lines}", problems)


def _time_zone(name: str | None) -> tuple[str, str | None]:
    """The IANA name of a time zone (UTC when unset), or a problem."""
    if name is None or str(name).strip() == "":
        return "UTC", None
    name = str(name).strip()
    if name.upper() in ("UTC", "Z", "GMT"):
        return "UTC", None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return name, (
            f"time_zone '{name}' is not a known time zone; use an IANA name such as 'UTC', "
            "'Europe/Berlin' or 'America/New_York'"
        )
    return name, None


def _week_day(value: Any) -> str | None:
    text = str(value).strip().lower()
    for day in WEEK_DAYS:
        if text in (day.lower(), day[:3].lower()):
            return day
    return None


def _int_list(values: Any, label: str, low: int, high: int, problems: list[str]) -> tuple[int, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, str)):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            problems.append(f"{label} must be integers from {low} to {high}; got {v!r}")
        else:
            out.append(v)
    if not out and not problems:
        problems.append(f"{label} is empty; leave it out or give at least one value")
    return tuple(sorted(set(out)))


def _parse_start(value: Any, tz: str, problems: list[str]) -> datetime | None:
    """``start_time`` as an aware datetime (a naive one is in the schedule's time zone)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            problems.append(
                f"start_time '{value}' is not an ISO date-time; write e.g. '2026-01-31T09:30:00'"
            )
            return None
    if not isinstance(value, datetime):
        problems.append(f"start_time must be a datetime or an ISO string; got {type(value).__name__}")
        return None
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        zone = timezone.utc  # the time zone problem is reported on its own
    return value.replace(tzinfo=zone) if value.tzinfo is None else value.astimezone(zone)


def _ceil_minute(t: datetime) -> datetime:
    whole = t.replace(second=0, microsecond=0)
    return whole if whole == t else whole + timedelta(minutes=1)


@dataclass(frozen=True)
class ScheduleRecurrence:
    """How often a schedule runs, with Azure ML's arguments and rules.

    ``ScheduleRecurrence(frequency="Minute", interval=15)``,
    ``ScheduleRecurrence("Day", 1, hours=[9, 17], minutes=[30], time_zone="Europe/Berlin")``,
    ``ScheduleRecurrence("Week", 2, week_days=["Monday"], time_of_day="07:00",
    start_time="2026-01-05T00:00:00")``.

    Every problem is reported at once, as a ``ScheduleError``.
    """

    frequency: str
    interval: int
    hours: Sequence[int] | None = None
    minutes: Sequence[int] | None = None
    week_days: Sequence[str] | None = None
    time_of_day: str | None = None
    time_zone: str | None = None
    start_time: datetime | str | None = None
    _start: datetime | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        freq = next((f for f in FREQUENCIES if str(self.frequency).strip().lower() == f.lower()), None)
        if freq is None:
            problems.append(
                f"frequency '{self.frequency}' is not one of {', '.join(FREQUENCIES)}"
            )
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            problems.append(f"interval must be a whole number >= 1; got {self.interval!r}")
        hours = _int_list(self.hours, "hours", 0, 23, problems)
        minutes = _int_list(self.minutes, "minutes", 0, 59, problems)
        days = None
        if self.week_days is not None:
            given = [self.week_days] if isinstance(self.week_days, str) else list(self.week_days)
            days = tuple(d for d in (_week_day(v) for v in given) if d)
            bad = [v for v in given if _week_day(v) is None]
            if bad:
                problems.append(
                    f"week_days {bad!r} are not week days; use {', '.join(WEEK_DAYS)}"
                )
            elif not days:
                problems.append("week_days is empty; leave it out or give at least one day")
            days = tuple(sorted(set(days), key=WEEK_DAYS.index))
        time_of_day = None
        if self.time_of_day is not None:
            match = _TIME_OF_DAY.match(str(self.time_of_day).strip())
            if not match or int(match[1]) > 23 or int(match[2]) > 59:
                problems.append(f"time_of_day '{self.time_of_day}' is not a time; write 'hh:mm', e.g. '09:30'")
            else:
                time_of_day = f"{int(match[1]):02d}:{match[2]}"
        if freq is not None:
            if freq not in ("Day", "Week"):
                for label, value in (("hours", self.hours), ("minutes", self.minutes), ("time_of_day", self.time_of_day)):
                    if value is not None:
                        problems.append(
                            f"{label} is only allowed with frequency 'Day' or 'Week' (not '{freq}'); "
                            "for a Minute, Hour or Month schedule set start_time instead"
                        )
            if freq != "Week" and self.week_days is not None:
                problems.append(f"week_days is only allowed with frequency 'Week' (not '{freq}')")
        if self.time_of_day is not None and (self.hours is not None or self.minutes is not None):
            problems.append("give either time_of_day or hours/minutes, not both")
        tz, tz_problem = _time_zone(self.time_zone)
        if tz_problem:
            problems.append(tz_problem)
        start = _parse_start(self.start_time, tz, problems)
        if problems:
            raise _problems_error("ScheduleRecurrence", problems)
        object.__setattr__(self, "frequency", freq)
        object.__setattr__(self, "hours", hours)
        object.__setattr__(self, "minutes", minutes)
        object.__setattr__(self, "week_days", days)
        object.__setattr__(self, "time_of_day", time_of_day)
        object.__setattr__(self, "time_zone", tz)
        object.__setattr__(self, "_start", start)
        object.__setattr__(self, "start_time", start.isoformat() if start else None)

    # --- records --------------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """The recurrence as JSON-able values (the schedule record stores it)."""
        return {
            "frequency": self.frequency,
            "interval": self.interval,
            "hours": list(self.hours) if self.hours is not None else None,
            "minutes": list(self.minutes) if self.minutes is not None else None,
            "week_days": list(self.week_days) if self.week_days is not None else None,
            "time_of_day": self.time_of_day,
            "time_zone": self.time_zone,
            "start_time": self.start_time,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ScheduleRecurrence:
        """Rebuild a recurrence from ``to_record()``'s values (validated again)."""
        known = ("frequency", "interval", "hours", "minutes", "week_days", "time_of_day", "time_zone", "start_time")
        unknown = sorted(set(record) - set(known))
        if unknown:
            raise ScheduleError(f"ScheduleRecurrence record has unknown fields {unknown}")
        return cls(**{k: record.get(k) for k in known})

    # --- cron -----------------------------------------------------------------------------
    def plan(self, created: datetime) -> CronPlan:
        """The cron schedule and tick filter of this recurrence for a schedule created at
        ``created`` (aware)."""
        zone = ZoneInfo(self.time_zone)
        created_local = created.astimezone(zone)
        anchor = _ceil_minute(self._start) if self._start else _ceil_minute(created_local)
        clock_aligned = self._start is None
        n, freq = self.interval, self.frequency
        # Multiples of the next unit are that unit (every 120 minutes = every 2 hours).
        if freq == "Minute" and n % 60 == 0:
            freq, n = "Hour", n // 60
        if freq == "Hour" and n % 24 == 0:
            freq, n = "Day", n // 24
        common = {"timezone": self.time_zone, "created": created_local, "start": self._start}
        if freq == "Minute":
            aligned = clock_aligned and 60 % n == 0
            step = math.gcd(n, 60)
            minute = 0 if aligned else anchor.minute % step
            field_ = "*" if step == 1 else f"{minute}-59/{step}"
            return CronPlan(f"{field_} * * * *", exact=step == n and (aligned or self._start is not None),
                            anchor=anchor, unit="minutes", every=n, **common)
        if freq == "Hour":
            aligned = clock_aligned and 24 % n == 0
            step = math.gcd(n, 24)
            minute = 0 if aligned else anchor.minute
            hour = 0 if aligned else anchor.hour % step
            field_ = "*" if step == 1 else f"{hour}-23/{step}"
            return CronPlan(f"{minute} {field_} * * *", exact=step == n and (aligned or self._start is not None),
                            anchor=anchor, unit="hours", every=n, **common)
        if freq in ("Day", "Week"):
            hours, minutes = self._times(anchor, freq == self.frequency)
            days = "*"
            if freq == "Week":
                week_days = self.week_days or (WEEK_DAYS[anchor.weekday()],)
                days = ",".join(str(d) for d in sorted(_CRON_WEEK_DAY[d] for d in week_days))
            cron = f"{','.join(map(str, minutes))} {','.join(map(str, hours))} * * {days}"
            return CronPlan(cron, exact=n == 1, anchor=anchor, unit="days" if freq == "Day" else "weeks",
                            every=n, **common)
        # Month: the start day and time, every n months.
        months = "*" if n == 1 else (f"{(anchor.month - 1) % n + 1}-12/{n}" if 12 % n == 0 else "*")
        cron = f"{anchor.minute} {anchor.hour} {anchor.day} {months} *"
        return CronPlan(cron, exact=12 % n == 0, anchor=anchor, unit="months", every=n, **common)

    def _times(self, anchor: datetime, own: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Hours and minutes of a Day or Week schedule (``own``: given for this frequency)."""
        if own and self.time_of_day:
            hour, minute = self.time_of_day.split(":")
            return (int(hour),), (int(minute),)
        if own and (self.hours or self.minutes):
            return self.hours or (anchor.hour,), self.minutes or (0,)
        return (anchor.hour,), (anchor.minute,)

    def describe(self) -> str:
        """In words: ``every 7 minutes from 2026-01-31T10:03:00+00:00 (UTC)``."""
        unit = self.frequency.lower() + ("s" if self.interval != 1 else "")
        text = f"every {self.interval} {unit}" if self.interval != 1 else f"every {unit}"
        if self.week_days:
            text += " on " + ", ".join(self.week_days)
        if self.time_of_day:
            text += f" at {self.time_of_day}"
        elif self.hours or self.minutes:
            text += f" at hours {list(self.hours or [])} minutes {list(self.minutes or [0])}"
        if self.start_time:
            text += f" from {self.start_time}"
        return f"{text} ({self.time_zone})"


@dataclass(frozen=True)
class CronPlan:
    """A recurrence as Dagster runs it: a cron expression in a time zone, and which of its
    ticks to skip (none when ``exact``, except those before the start or the creation)."""

    cron: str
    timezone: str
    exact: bool
    anchor: datetime  # the first wanted tick (aware, in ``timezone``); intervals count from it
    unit: str  # minutes | hours | days | weeks | months
    every: int
    created: datetime
    start: datetime | None

    def skip_reason(self, when: datetime) -> str | None:
        """Why the tick at ``when`` starts no run, or None when it is a wanted tick."""
        t = when.astimezone(ZoneInfo(self.timezone))
        if t <= self.created:
            return (
                f"the tick at {t.isoformat()} is not after the schedule's creation "
                f"({self.created.isoformat()}); a schedule never runs at creation"
            )
        if self.start is not None and t < self.anchor:
            return f"the tick at {t.isoformat()} is before the schedule's start_time ({self.anchor.isoformat()})"
        if self.exact or self.on_grid(t):
            return None
        return f"the tick at {t.isoformat()} is between the schedule's runs ({self.describe_grid()})"

    def on_grid(self, t: datetime) -> bool:
        """Whether ``t`` is a whole number of intervals after the anchor."""
        a, n = self.anchor, self.every
        if self.unit in ("minutes", "hours"):
            size = 60 if self.unit == "minutes" else 3600
            elapsed = round((t.timestamp() - a.timestamp()) / size)
            return elapsed >= 0 and elapsed % n == 0
        if self.unit == "days":
            return (t.date() - a.date()).days % n == 0
        if self.unit == "weeks":
            monday_t = t.date() - timedelta(days=t.weekday())
            monday_a = a.date() - timedelta(days=a.weekday())
            return ((monday_t - monday_a).days // 7) % n == 0
        return ((t.year * 12 + t.month) - (a.year * 12 + a.month)) % n == 0

    def describe_grid(self) -> str:
        return f"every {self.every} {self.unit} from {self.anchor.isoformat()}"

    def ticks(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` wanted ticks after ``after`` (for listings and tests)."""
        from dagster._utils.schedules import cron_string_iterator

        out: list[datetime] = []
        for seen, t in enumerate(cron_string_iterator(after.timestamp() + 1, self.cron, self.timezone)):
            if seen > 1_000_000:  # a year of minutes: no wanted tick (cannot happen for a valid plan)
                break
            if self.skip_reason(t) is None:
                out.append(t)
                if len(out) >= count:
                    break
        return out

