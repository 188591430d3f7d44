"""A record of what was skipped while reading a captioned-image data set, and why.

Real Flickr files contain malformed lines, captions for images that are not on disk, and broken
downloads. Reading skips them instead of crashing, but never silently: each skip is an entry here,
the report is written to a file a person can read, and too many skips stop the run (see
`SkipReport.raise_if_too_many`), because a data set that is 20% broken is usually the wrong folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kclip.utils.files import write_json, write_text

# Reasons, used as the categories that counts are kept by.
MALFORMED_LINE = "malformed caption line"
EMPTY_CAPTION = "empty caption"
MISSING_IMAGE = "image file missing"
UNREADABLE_IMAGE = "unreadable image file"
OUTSIDE_DATA_FOLDER = "image outside the data folder"
# Informational: these drop nothing that a user would expect to train on.
NOT_IN_SPLIT_LISTS = "image not in the official split lists"
IMAGE_WITHOUT_CAPTIONS = "image without captions"


@dataclass(frozen=True)
class SkipEntry:
    """One skipped item: `item` names it (a file, or "file:line"), `reason` is the category."""

    item: str
    reason: str
    detail: str = ""
    captions_dropped: int = 0
    # False for entries that are worth knowing about but are not errors in the data.
    bad: bool = True


@dataclass
class SkipReport:
    """Everything skipped while reading one data set.

    `total_captions` is the number of caption lines read (good and bad); the bad fraction is the
    share of them dropped because of bad entries.
    """

    entries: list[SkipEntry] = field(default_factory=list)
    total_captions: int = 0
    source: str = ""

    def add(self, item: str, reason: str, detail: str = "", captions_dropped: int = 0,
            bad: bool = True) -> None:
        self.entries.append(SkipEntry(str(item), reason, detail, int(captions_dropped), bad))

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        # A report with no entries is still a report: never let `if report:` mean "is empty".
        return True

    @property
    def bad_entries(self) -> list[SkipEntry]:
        return [entry for entry in self.entries if entry.bad]

    @property
    def bad_captions(self) -> int:
        """Caption lines dropped because of bad entries."""
        return sum(entry.captions_dropped for entry in self.bad_entries)

    @property
    def bad_fraction(self) -> float:
        return self.bad_captions / self.total_captions if self.total_captions else 0.0

    def counts_by_reason(self) -> dict[str, int]:
        """Number of entries per reason, most frequent first."""
        return dict(Counter(entry.reason for entry in self.entries).most_common())

    def items_for(self, reason: str) -> list[str]:
        return [entry.item for entry in self.entries if entry.reason == reason]

    def summary(self) -> str:
        """One line, e.g. 'dropped 12 of 40455 captions (0.03%): 2 malformed caption line, ...'."""
        if not self.entries:
            return f"nothing skipped ({self.total_captions} captions read)"
        counts = ", ".join(f"{count} x {reason}" for reason, count in self.counts_by_reason().items())
        return (
            f"dropped {self.bad_captions} of {self.total_captions} captions "
            f"({100 * self.bad_fraction:.2f}%); {len(self.entries)} skipped items: {counts}"
        )

    def to_text(self) -> str:
        lines = [f"kclip skip report for {self.source}" if self.source else "kclip skip report",
                 self.summary(), ""]
        for reason, count in self.counts_by_reason().items():
            lines.append(f"== {reason} ({count}) ==")
            for entry in self.entries:
                if entry.reason == reason:
                    dropped = f" [{entry.captions_dropped} captions dropped]" if entry.captions_dropped else ""
                    detail = f": {entry.detail}" if entry.detail else ""
                    lines.append(f"{entry.item}{detail}{dropped}")
            lines.append("")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "summary": self.summary(),
            "total_captions": self.total_captions,
            "bad_captions": self.bad_captions,
            "bad_fraction": self.bad_fraction,
            "counts_by_reason": self.counts_by_reason(),
            "entries": [asdict(entry) for entry in self.entries],
        }

    def write(self, path: str | Path) -> Path:
        """Write the readable report to `path` and the same data as JSON next to it (`.json`)."""
        path = Path(path)
        write_text(path, self.to_text())
        write_json(path.with_suffix(".json"), self.to_json(), indent=1)
        return path

    def raise_if_too_many(self, max_bad_fraction: float, report_path: str | Path | None) -> None:
        """Raise ValueError when more than `max_bad_fraction` of the captions were dropped."""
        if self.bad_fraction <= max_bad_fraction:
            return
        where = f"See {report_path} for every skipped item. " if report_path else ""
        raise ValueError(
            f"Too much of the data set is broken: {self.bad_captions} of {self.total_captions} "
            f"captions ({100 * self.bad_fraction:.1f}%) were dropped, above the limit of "
            f"{100 * max_bad_fraction:.1f}% ({self.summary()}). {where}"
            "Check that the folder is the data set you meant, repair or re-download the bad files, "
            "or raise the limit with max_bad_fraction (e.g. max_bad_fraction=0.2)."
        )
