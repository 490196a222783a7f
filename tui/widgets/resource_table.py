"""A read-only table that renders only the lines on screen, so 10,000 rows scroll and filter smoothly.

Textual's DataTable builds a renderable per row when rows are added (about half
a second for 10,000 rows, and again after every filter). This table keeps the
rows as plain tuples, filters them into a list of indices, and formats only the
visible lines in :meth:`render_line` (the Line API).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip


class Row(NamedTuple):
    """One row: a key (what it stands for), the cell texts, and what filters search."""

    key: str
    cells: tuple[str, ...]
    haystack: str = ""
    labels: dict[str, str] = {}
    #: Optional per-cell styles (same length as cells; "" for the default)
    styles: tuple[str, ...] = ()


def make_row(key: str, cells: Sequence[str], labels: dict[str, str] | None = None) -> Row:
    """A :class:`Row` whose haystack is every cell, lowercased."""
    texts = tuple(cells)
    return Row(key, texts, " ".join(texts).lower(), labels or {})


def parse_filter(text: str) -> tuple[list[str], dict[str, str]]:
    """``"prod env=dev"`` → (search words, label filters)."""
    words: list[str] = []
    labels: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key:
            labels[key] = value
        else:
            words.append(token.lower())
    return words, labels


def row_matches(row: Row, words: list[str], labels: dict[str, str]) -> bool:
    """Every word is in the row's text and every label filter matches (``key=`` any value)."""
    hay = row.haystack
    for w in words:
        if w not in hay:
            return False
    for k, v in labels.items():
        have = row.labels.get(k)
        if have is None or (v and have != v):
            return False
    return True


class ResourceTable(ScrollView, can_focus=True):
    """Rows under a fixed header; a cursor row; type-to-filter via :meth:`filter`."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    COMPONENT_CLASSES = {
        "resource-table--header",
        "resource-table--cursor",
        "resource-table--odd",
    }

    DEFAULT_CSS = """
    ResourceTable {
        background: $surface;
        height: 1fr;
    }
    ResourceTable > .resource-table--header {
        text-style: bold;
        background: $panel;
        color: $text;
    }
    ResourceTable > .resource-table--cursor {
        background: $block-cursor-blurred-background;
    }
    ResourceTable:focus > .resource-table--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    ResourceTable > .resource-table--odd {
        background: $surface-lighten-1 10%;
    }
    """

    cursor = reactive(0, always_update=True, layout=False)

    class Highlighted(Message):
        """The cursor moved to another row (``row`` is None when the view is empty)."""

        def __init__(self, table: ResourceTable, row: Row | None) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> ResourceTable:
            """The table (for ``@on(..., selector)``)."""
            return self.table

    class Selected(Message):
        """Enter or a double click on a row."""

        def __init__(self, table: ResourceTable, row: Row) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> ResourceTable:
            """The table (for ``@on(..., selector)``)."""
            return self.table

    def __init__(
        self,
        columns: Sequence[tuple[str, int]],
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        """``columns``: (title, maximum width); the last column takes the remaining width."""
        super().__init__(name=name, id=id, classes=classes)
        self.columns = list(columns)
        self.rows: list[Row] = []
        self.view: list[int] = []
        self._widths: list[int] = [len(t) for t, _ in self.columns]
        self._last_key: str | None = None
        #: The text of the last :meth:`filter` (None after :meth:`apply`)
        self._filter_text: str | None = None

    # ------------------------------------------------------------------ data
    def set_rows(self, rows: list[Row], *, keep: Callable[[Row], bool] | None = None) -> None:
        """Replace every row; ``keep`` filters them (None: all). The cursor stays on its key."""
        self.rows = rows
        self._measure()
        self.apply(keep)

    def apply(self, keep: Callable[[Row], bool] | None) -> None:
        """Show only the rows ``keep`` accepts (None: all)."""
        rows = self.rows
        if keep is None:
            view = list(range(len(rows)))
        else:
            view = [i for i, r in enumerate(rows) if keep(r)]
        self._filter_text = None
        self._set_view(view)

    def _set_view(self, view: list[int]) -> None:
        rows = self.rows
        self.view = view
        self.virtual_size = Size(0, len(view) + 1)  # width 0: no horizontal scrolling
        new = 0
        if self._last_key is not None:
            for pos, i in enumerate(view):
                if rows[i].key == self._last_key:
                    new = pos
                    break
        self.cursor = new
        self._ensure_visible()
        self.refresh()

    def filter(self, text: str) -> None:
        """Type-to-filter: words search every cell, ``key=value`` matches labels.

        When ``text`` only extends the previous filter after a complete token (the usual
        typing), only the rows still shown are searched again.
        """
        words, labels = parse_filter(text)
        previous = self._filter_text
        narrowing = (
            previous is not None
            and text.startswith(previous)
            and (previous == "" or previous[-1].isspace() or "=" not in previous.split()[-1])
            and "=" not in text[len(previous) :]
        )
        candidates = self.view if narrowing else range(len(self.rows))
        rows = self.rows
        view = list(candidates) if words or labels else list(range(len(rows)))
        # one pass per constraint, each a plain comprehension (no call per row)
        for k, v in labels.items():
            if v:
                view = [i for i in view if rows[i].labels.get(k) == v]
            else:
                view = [i for i in view if k in rows[i].labels]
        for w in words:
            view = [i for i in view if w in rows[i].haystack]
        self._filter_text = text
        self._set_view(view)

    @property
    def current(self) -> Row | None:
        """The row under the cursor."""
        if not self.view or not 0 <= self.cursor < len(self.view):
            return None
        return self.rows[self.view[self.cursor]]

    def _measure(self) -> None:
        widths = [len(t) for t, _ in self.columns]
        caps = [cap for _, cap in self.columns]
        for r in self.rows:
            for i, cell in enumerate(r.cells[: len(widths)]):
                n = len(cell)
                if n > widths[i]:
                    widths[i] = min(n, caps[i])
        self._widths = widths

    def _total_width(self) -> int:
        return sum(self._widths) + 2 * len(self._widths)

    # ------------------------------------------------------------------ cursor
    def watch_cursor(self, old: int, new: int) -> None:
        row = self.current
        self._last_key = row.key if row else None
        self.post_message(self.Highlighted(self, row))
        self.refresh()

    def _ensure_visible(self) -> None:
        visible = max(self.size.height - 1, 1)
        top = int(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False)

    def _move_to(self, index: int) -> None:
        if not self.view:
            return
        self.cursor = max(0, min(index, len(self.view) - 1))
        self._ensure_visible()

    def action_cursor(self, delta: int) -> None:
        """Move the cursor by ``delta`` rows."""
        self._move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        """Move by one screen."""
        self._move_to(self.cursor + direction * max(self.size.height - 2, 1))

    def action_jump(self, index: int) -> None:
        """First (0) or last (-1) row."""
        self._move_to(len(self.view) - 1 if index < 0 else index)

    def action_select(self) -> None:
        """Post :class:`Selected` for the row under the cursor."""
        row = self.current
        if row is not None:
            self.post_message(self.Selected(self, row))

    def on_click(self, event: events.Click) -> None:
        """A click moves the cursor; a double click selects."""
        if event.y < 1:
            return
        index = int(self.scroll_offset.y) + event.y - 1
        if 0 <= index < len(self.view):
            self.cursor = index
            if event.chain >= 2:
                self.action_select()

    # ------------------------------------------------------------------ rendering
    def _line(self, cells: Sequence[str], style: Style, styles: Sequence[str] = ()) -> Strip:
        width = self.size.width
        segs: list[Segment] = []
        used = 0
        last = len(self._widths) - 1
        for i, w in enumerate(self._widths):
            text = cells[i] if i < len(cells) else ""
            if i == last:
                w = max(w, width - used - 1)
            if len(text) > w:
                text = text[: max(w - 1, 0)] + "…"
            cell_style = style
            if i < len(styles) and styles[i]:
                cell_style = style + Style.parse(styles[i])
            segs.append(Segment(" " + text.ljust(w) + " ", cell_style))
            used += w + 2
        strip = Strip(segs)
        return strip.crop(0, width).extend_cell_length(width, style)

    def render_line(self, y: int) -> Strip:
        """The header on the first line, then the rows from the scroll offset."""
        if y == 0:
            style = self.get_component_rich_style("resource-table--header")
            return self._line([t for t, _ in self.columns], style)
        index = int(self.scroll_offset.y) + y - 1
        base = self.rich_style
        if index >= len(self.view):
            return Strip.blank(self.size.width, base)
        row = self.rows[self.view[index]]
        if index == self.cursor:
            style = base + self.get_component_rich_style("resource-table--cursor")
        elif index % 2:
            style = base + self.get_component_rich_style("resource-table--odd")
        else:
            style = base
        return self._line(row.cells, style, row.styles)

    def on_resize(self, event: events.Resize) -> None:
        """Keep the cursor on screen."""
        self._ensure_visible()
