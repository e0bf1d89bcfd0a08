"""`ConfirmScreen`: a yes/no question guarding a destructive action.

Dismisses with True only on an explicit "y" / Enter on Yes; Escape, "n" and No answer
False, so a stray key never restarts a process. The buttons may say what they do
(`yes_label`, `no_label`); the keys stay y and n.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str, detail: str = "", *, yes_label: str = "Yes",
                 no_label: str = "No") -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.yes_label = yes_label
        self.no_label = no_label

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(self.question, id="confirm-question")
            if self.detail:
                yield Label(self.detail, id="confirm-detail")
            with Horizontal(id="confirm-buttons"):
                yield Button(f"{self.no_label} (n)", id="no", variant="primary")
                yield Button(f"{self.yes_label} (y)", id="yes", variant="error")

    def on_mount(self) -> None:
        # The safe answer has the focus: Enter alone never confirms.
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
