"""The report of benchmarks/fusefs.py: its operations, its targets, its tables and its JSON.

Must not measure or mount anything: fusefs.py does, and hands the measures in here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from _common import LabelledTarget, Measure, Target, format_us

__all__ = [
    "DISK_ROW",
    "FLOOR_ROW",
    "GROUP",
    "GROUPS",
    "Group",
    "find_row",
    "gib_per_s",
    "measures_json",
    "print_measures",
    "print_summary",
    "summary",
    "with_targets",
]

WARM_TARGET: Final = 0.70  # fusefs warm read rate / native rate
COLD_TARGET_GIB_S: Final = 2.5
ROUND_TRIP_TARGET: Final = 1.3  # fusefs open+read+close p50 / fusefs round trip p50
STAT_TARGET: Final = 2.0  # fusefs cached stat p50 / native stat p50
LISTDIR_TARGET: Final = 2.0  # fusefs listdir p50 / bindfs listdir p50


@dataclass(frozen=True)
class Group:
    """One operation, measured on each file system; its native row is its floor."""

    key: str
    title: str
    per_mib: bool = False  # bulk: samples are time per MiB moved


GROUPS: Final = (
    Group("read-warm", "sequential read, warm (the mount's page cache filled)", per_mib=True),
    Group(
        "read-cold",
        "sequential read, cold (the mount's page cache empty, the backing file cached)",
        per_mib=True,
    ),
    Group("open-read-close", "open + read 4 KiB + close"),
    Group("stat", "stat, attributes cached by the kernel"),
    Group("round-trip", "stat of a missing name: one FUSE round trip (lookup -> ENOENT)"),
    Group("listdir", "os.listdir of a directory of 1,000 entries"),
    Group("write", "sequential write, 128 KiB writes + fsync + close", per_mib=True),
    Group("create", "create + write 4 KiB + close of a new file"),
    Group("volume-stat", "stat of a file looked up for the first time, in the large volume"),
    Group("volume-read", "open + read + close of a file of the large volume, long looked up"),
)
GROUP: Final = {group.key: group for group in GROUPS}
DISK_ROW: Final = "native, from disk (its page cache dropped first)"
FLOOR_ROW: Final = "pyfuse3 floor (no work per entry but readdir_reply)"
#: the rows set against bindfs in the p50/bindfs column
_AGAINST_BINDFS: Final = ("fusefs", "floor")


def gib_per_s(us_per_mib: float) -> float:
    return 1e6 / us_per_mib / 1024


def find_row(measures: Sequence[Measure], group: str, fs: str) -> Measure | None:
    """The row of ``fs`` in ``group`` (each group has one per file system)."""
    return next((m for m in measures if m.extra["group"] == group and m.extra["fs"] == fs), None)


def with_targets(measures: list[Measure]) -> list[Measure]:
    """The fusefs rows that have a target in PERFORMANCE.md, with it; the rest unchanged.
    The listing's target is set against bindfs, so it is missing when bindfs is."""
    native_warm = find_row(measures, "read-warm", "native")
    native_stat = find_row(measures, "stat", "native")
    round_trip = find_row(measures, "round-trip", "fusefs")
    bindfs_listdir = find_row(measures, "listdir", "bindfs")
    targets: dict[str, Target] = {}
    if native_warm is not None:
        targets["read-warm"] = LabelledTarget(
            native_warm.p50_us / WARM_TARGET, label=f">= {WARM_TARGET:.0%} of native rate"
        )
    targets["read-cold"] = LabelledTarget(
        1e6 / (COLD_TARGET_GIB_S * 1024), label=f">= {COLD_TARGET_GIB_S:g} GiB/s"
    )
    if round_trip is not None:
        targets["open-read-close"] = LabelledTarget(
            round_trip.p50_us * ROUND_TRIP_TARGET,
            label=f"<= {ROUND_TRIP_TARGET:g}x one round trip",
        )
    if native_stat is not None:
        targets["stat"] = LabelledTarget(
            native_stat.p50_us * STAT_TARGET, label=f"<= {STAT_TARGET:g}x native"
        )
    if bindfs_listdir is not None:
        targets["listdir"] = LabelledTarget(
            bindfs_listdir.p50_us * LISTDIR_TARGET, label=f"<= {LISTDIR_TARGET:g}x bindfs"
        )
    return [
        replace(m, target=targets.get(m.extra["group"]))
        if m.extra["fs"] == "fusefs" and m.extra["group"] in targets
        else m
        for m in measures
    ]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _floor_of(measures: Sequence[Measure], measure: Measure) -> Measure | None:
    """The native row a measure is compared with: for cold reads, native from the page cache."""
    group = measure.extra["group"]
    return find_row(measures, "read-warm" if group == "read-cold" else group, "native")


def _ratios(measures: Sequence[Measure], measure: Measure) -> tuple[float | None, float | None]:
    floor = _floor_of(measures, measure)
    bindfs = find_row(measures, measure.extra["group"], "bindfs")
    to_floor = None if floor is None else measure.p50_us / floor.p50_us
    to_bindfs = (
        None
        if bindfs is None or measure.extra["fs"] not in _AGAINST_BINDFS
        else measure.p50_us / bindfs.p50_us
    )
    return to_floor, to_bindfs


def _table(
    title: str, header: Sequence[str], groups: Sequence[tuple[str, list[list[str]]]]
) -> None:
    rows = [list(header)] + [row for _, block in groups for row in block]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {1, 2, 3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * max(len(line(header)), *(len(name) for name, _ in groups))
    print(title)
    print(rule)
    print(line(header))
    print(rule)
    for name, block in groups:
        print(name)
        for row in block:
            print(line(row))
    print(rule)


def print_measures(title: str, measures: Sequence[Measure]) -> None:
    header = (
        "measure",
        "p50 us",
        "p99 us",
        "p50/native",
        "p50/bindfs",
        "rate at p50",
        "target",
        "met",
    )
    groups: list[tuple[str, list[list[str]]]] = []
    for group in GROUPS:
        block: list[list[str]] = []
        for measure in (m for m in measures if m.extra["group"] == group.key):
            to_floor, to_bindfs = _ratios(measures, measure)
            met = measure.met
            block.append(
                [
                    f"  {measure.extra['row']}",
                    format_us(measure.p50_us),
                    format_us(measure.p99_us),
                    _ratio(to_floor),
                    _ratio(to_bindfs),
                    f"{gib_per_s(measure.p50_us):.2f} GiB/s" if group.per_mib else "-",
                    measure.target.describe() if measure.target else "-",
                    "-" if met is None else ("yes" if met else "NO"),
                ]
            )
        if block:
            unit = "time per MiB" if group.per_mib else "time per call"
            groups.append((f"{group.title} [{unit}]", block))
    _table(title, header, groups)


Figure = tuple[str, float] | None  # (text, value) of one file system against one target


def summary(measures: Sequence[Measure]) -> list[dict[str, Any]]:
    """The targets of PERFORMANCE.md against this run: fusefs, and bindfs beside it."""

    def find(group: str, fs: str) -> Measure | None:
        return find_row(measures, group, fs)

    native_read, native_stat = find("read-warm", "native"), find("stat", "native")

    def warm(fs: str) -> Figure:
        row = find("read-warm", fs)
        if row is None or native_read is None:
            return None
        share = native_read.p50_us / row.p50_us
        return f"{gib_per_s(row.p50_us):.2f} GiB/s = {share:.1%} of native", share

    def cold(fs: str) -> Figure:
        row = find("read-cold", fs)
        return (
            None if row is None else (f"{gib_per_s(row.p50_us):.2f} GiB/s", gib_per_s(row.p50_us))
        )

    def ratio(row: Measure | None, floor: Measure | None) -> Figure:
        if row is None or floor is None:
            return None
        value = row.p50_us / floor.p50_us
        return f"{format_us(row.p50_us)} / {format_us(floor.p50_us)} us = {value:.2f}x", value

    disk = find("read-cold", "native")
    disk_text = "" if disk is None else f" (native from disk: {gib_per_s(disk.p50_us):.2f} GiB/s)"
    native_text = "" if native_read is None else f" ({gib_per_s(native_read.p50_us):.2f} GiB/s)"
    specs: list[tuple[str, Callable[[str], Figure], str, Callable[[float], bool]]] = [
        (
            f"sequential read, warm: rate, share of native{native_text}",
            warm,
            f">= {WARM_TARGET:.0%} of native",
            lambda value: value >= WARM_TARGET,
        ),
        (
            f"sequential read, cold: rate{disk_text}",
            cold,
            f">= {COLD_TARGET_GIB_S:g} GiB/s",
            lambda value: value >= COLD_TARGET_GIB_S,
        ),
        (
            "open + read + close / one FUSE round trip, p50",
            lambda fs: ratio(find("open-read-close", fs), find("round-trip", fs)),
            f"<= {ROUND_TRIP_TARGET:g}x",
            lambda value: value <= ROUND_TRIP_TARGET,
        ),
        (
            "stat, cached / native stat, p50",
            lambda fs: ratio(find("stat", fs), native_stat),
            f"<= {STAT_TARGET:g}x",
            lambda value: value <= STAT_TARGET,
        ),
    ]
    rows: list[dict[str, Any]] = []
    for name, figure, target, ok in specs:
        figures = {fs: figure(fs) for fs in ("fusefs", "bindfs")}
        ours = figures["fusefs"]
        rows.append(
            {
                "measure": name,
                **{
                    fs: None if got is None else {"text": got[0], "value": round(got[1], 4)}
                    for fs, got in figures.items()
                },
                "target": target,
                "met": None if ours is None else ok(ours[1]),
            }
        )
    return rows


def print_summary(rows: Sequence[dict[str, Any]]) -> None:
    header = ("target (PERFORMANCE.md)", "fusefs", "bindfs", "target", "met")

    def text(figure: dict[str, Any] | None) -> str:
        return "skipped" if figure is None else str(figure["text"])

    cells = [
        (
            r["measure"],
            text(r["fusefs"]),
            text(r["bindfs"]),
            r["target"],
            "-" if r["met"] is None else ("yes" if r["met"] else "NOT met"),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()

    rule = "-" * len(line(header))
    print()
    print("fusefs against the targets (bindfs beside it for comparison; not a target)")
    print(rule)
    print(line(header))
    print(rule)
    for row in cells:
        print(line(row))
    print(rule)


def measures_json(measures: Sequence[Measure]) -> list[dict[str, Any]]:
    """Each row as the other benchmarks write it; its floor is its own operation's native row."""
    entries = []
    for measure in measures:
        to_floor, to_bindfs = _ratios(measures, measure)
        floor = _floor_of(measures, measure)
        group = GROUP[measure.extra["group"]]
        entry: dict[str, Any] = {
            "name": measure.name,
            "p50_us": round(measure.p50_us, 4),
            "p99_us": round(measure.p99_us, 4),
            "floor": None if floor is None else floor.name,
            "ratio_to_floor_p50": None if to_floor is None else round(to_floor, 5),
            "ratio_to_bindfs_p50": None if to_bindfs is None else round(to_bindfs, 5),
            "target": measure.target.describe() if measure.target else None,
            "target_p50_us": round(measure.target.p50_us, 4) if measure.target else None,
            "met": measure.met,
            "min_us": round(measure.min_us, 4),
            "mean_us": round(measure.mean_us, 4),
            "samples": measure.samples,
            "calls_per_sample": measure.calls_per_sample,
            **measure.extra,
        }
        if group.per_mib:
            entry["gib_per_s_p50"] = round(gib_per_s(measure.p50_us), 4)
        entries.append(entry)
    return entries
