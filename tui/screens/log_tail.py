"""`LogTailScreen`: the tail of one process's stdout log from supervisord, refreshed
every 2 s by a worker (XML-RPC in a thread); Escape closes it."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Label, Log

from ops.supervise.supervisor import SupervisorClient
from tui.control import tail_log


class LogTailScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,l", "close", "Close", id="log.close")]

    def __init__(self, client: SupervisorClient, qualified: str) -> None:
        super().__init__()
        self.client = client
        self.qualified = qualified
        self._last = ""

    def compose(self) -> ComposeResult:
        yield Label(f"log: {self.qualified}   (Escape closes)", id="log-title")
        yield Log(id="log-text", highlight=False)

    def on_mount(self) -> None:
        self.load()
        self.set_interval(2.0, self.load)

    @work(exclusive=True, group="log-tail", exit_on_error=False)
    async def load(self) -> None:
        try:
            text = await tail_log(self.client, self.qualified)
        except Exception as exc:  # supervisord away, no such process: say it in place
            text = f"cannot read the log of {self.qualified}: {exc}"
        if text != self._last:
            self._last = text
            log = self.query_one(Log)
            log.clear()
            log.write(text)

    def action_close(self) -> None:
        self.dismiss(None)
