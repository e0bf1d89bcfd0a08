"""`PauseModeScreen`: which kill switch mode to engage on an account — halt, reduce-only,
flatten (managed only) or flatten everything — each with what it does, in the words of
`ops pause` (ops.commands.control.KILL_SWITCH_MEANING).

It only picks: it dismisses with the mode's value (or None on Escape), and the app then
asks for confirmation as for every kill switch change (`Dashboard.pause_account`), so a
stray Enter here never closes a position. Keys: ↑↓ and Enter, or h / r / f / F directly.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from ops.commands.control import KILL_SWITCH_MEANING
from ops.core.models import KillSwitch

#: (mode, key, title) in the order offered: the gentlest first.
MODES: tuple[tuple[KillSwitch, str, str], ...] = (
    (KillSwitch.HALT, "h", "halt"),
    (KillSwitch.REDUCE_ONLY, "r", "reduce-only"),
    (KillSwitch.FLATTEN, "f", "flatten (managed only)"),
    (KillSwitch.FLATTEN_ALL, "F", "flatten EVERYTHING (external positions too)"),
)


class PauseModeScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "pick(None)", "Cancel", id="pause.cancel"),
        *(Binding(key, f"pick('{mode.value}')", title, id=f"pause.{mode.value}", show=False)
          for mode, key, title in MODES),
    ]

    def __init__(self, account: str, current: str = "off") -> None:
        super().__init__()
        self.account = account
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="pause-box"):
            yield Label(f"Pause {self.account}: which mode?  (kill switch now: "
                        f"{self.current})", id="pause-question", markup=False)
            yield OptionList(*(
                Option(f"{key}  {title}\n   {KILL_SWITCH_MEANING[mode]}", id=mode.value,
                       disabled=mode.value == self.current)
                for mode, key, title in MODES), id="pause-modes", markup=False)
            yield Label("Enter picks, then asks to confirm · Esc cancels", id="pause-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.focus()
        # The gentlest mode not already engaged is highlighted.
        options.highlighted = next((i for i, (mode, _, _) in enumerate(MODES)
                                    if mode.value != self.current), 0)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_pick(self, mode: str | None) -> None:
        if mode is not None and mode == self.current:
            self.notify(f"{self.account} is already in {mode}", severity="warning")
            return
        self.dismiss(mode)
