"""Tables for people on the terminal: rich where every cell fits, else plain aligned text."""

from __future__ import annotations

from dataclasses import dataclass, field

from stale_cli.detection.detections import VideoDetections
from stale_cli.detection.outputs import clock
from stale_cli.text import terminal_text


@dataclass
class TextTable:
    """A table of plain strings that is printed whole: a rich table on a terminal wide enough for every cell, else
    plain aligned text (a batch log, a pipe, a narrow terminal). Numbers are never cut to ``0.8…``.

    ``right``: per column, True to right-align (numbers). ``rules``: row indices a horizontal rule goes before.
    ``bold``: row indices printed in bold on a terminal. All text is printed as is (no markup).
    """

    title: str
    headers: list[str]
    right: list[bool]
    rows: list[list[str]] = field(default_factory=list)
    rules: set = field(default_factory=set)
    bold: set = field(default_factory=set)

    def widths(self) -> list[int]:
        return [max(len(r[j]) for r in [self.headers, *self.rows]) for j in range(len(self.headers))]

    def plain(self) -> str:
        widths = self.widths()

        def line(cells):
            return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, self.right)).rstrip()

        out = [self.title, line(self.headers), "  ".join("-" * w for w in widths)]
        for i, row in enumerate(self.rows):
            if i in self.rules and i > 0:
                out.append("  ".join("-" * w for w in widths))
            out.append(line(row))
        return "\n".join(out)

    def print(self, console) -> None:
        # Escaped first (as the console would print them), so that the columns are as wide as what is printed.
        self.title, self.headers = terminal_text(self.title), [terminal_text(h) for h in self.headers]
        self.rows = [[terminal_text(c) for c in row] for row in self.rows]
        # A rich table with its default padding and borders takes 3 columns per column plus 1.
        if not console.is_terminal or sum(self.widths()) + 3 * len(self.headers) + 1 > console.width:
            console.print(self.plain(), markup=False, highlight=False, soft_wrap=True)
            return
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(self.title), title_justify="left")
        for header, right in zip(self.headers, self.right):
            table.add_column(Text(header), justify="right" if right else "left", no_wrap=True)
        for i, row in enumerate(self.rows):
            if i in self.rules and i > 0:
                table.add_section()
            table.add_row(*(Text(c, style="bold" if i in self.bold else "") for c in row))
        console.print(table)


def print_table(video: VideoDetections, console) -> None:
    """A readable table of one video's segments, sorted by start time."""
    table = TextTable(f"{video.video_id}  ({clock(video.duration)}, {len(video.segments)} segments)",
                      ["start", "end", "label", "score"], [True, True, False, True])
    for s in sorted(video.segments, key=lambda s: (s.start, -s.score)):
        table.rows.append([clock(s.start), clock(s.end), s.label, f"{s.score:.3f}"])
    table.print(console)
