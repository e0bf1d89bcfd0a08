"""`DashFooter`: Textual's Footer showing only the keys that fit whole.

Textual's footer lays every key out in a row and docks the command-palette key over its
right end: at 80 columns the last keys were cut mid-word under the palette key and a
stray letter showed past it. Here the keys that do not fit (the last ones: BINDINGS are
in order of importance) are hidden instead; `?` lists every key, and hidden keys still
work.
"""

from __future__ import annotations

from rich.cells import cell_len
from textual.widgets import Footer
from textual.widgets._footer import FooterKey  # the footer's own key widget


def key_width(key: FooterKey) -> int:
    """Cells one footer key takes, margins included (as FooterKey.render draws it)."""
    kp = key.get_component_styles("footer-key--key").padding
    width = kp.left + cell_len(key.key_display) + kp.right
    if key.description:
        dp = key.get_component_styles("footer-key--description").padding
        width += dp.left + cell_len(key.description) + dp.right
    return width + key.styles.gutter.width + key.styles.margin.width


class DashFooter(Footer):
    async def recompose(self) -> None:
        await super().recompose()
        self.fit()

    def on_resize(self) -> None:
        self.fit()

    def fit(self) -> None:
        """Show the leading keys that fit beside the palette key; hide the rest."""
        keys = list(self.query_children(FooterKey))
        fixed = [k for k in keys if k.has_class("-command-palette")]
        room = self.size.width - sum(key_width(k) for k in fixed)
        used = 0
        for key in keys:
            if key in fixed:
                continue
            used += key_width(key)
            key.display = used <= room
