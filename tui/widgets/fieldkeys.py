"""Keys that move between the fields of a form, as priority bindings.

A plain binding acts only once the key has bubbled up from the focused field, behind
the keys queued after it; a priority binding is checked as each key arrives. So with
these, what is typed right after Tab or an arrow (type-ahead, a paste,
``alice<Tab>secret<Enter>`` from a password manager) lands in the field the key moved
to, never in the one before: a password never shows in the user field.
"""

from __future__ import annotations

from textual.binding import Binding

#: Tab / Shift+Tab: every form (dialogs, login, the wizard).
TAB_KEYS = [
    Binding("tab", "app.focus_next", "Next field", show=False, priority=True),
    Binding("shift+tab", "app.focus_previous", "Previous field", show=False, priority=True),
]
#: Down / Up as well: forms made only of one-line inputs and checkboxes.
ARROW_KEYS = [
    Binding("down", "app.focus_next", "Next field", show=False, priority=True),
    Binding("up", "app.focus_previous", "Previous field", show=False, priority=True),
]
