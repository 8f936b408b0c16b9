"""What every verb's report shares: a readable ``repr`` (its one-line verdict, the line the CLI prints last),
and the same line when rich or IPython renders it — so a report in a notebook reads like the command's end.

A report class subclasses :class:`Report` and defines ``summary()``; dataclass reports say ``repr=False`` so the
generated field dump does not replace it (``to_dict()`` holds every figure). Imports nothing of deploy.
"""

from __future__ import annotations


class Report:
    def summary(self) -> str:  # pragma: no cover - every report defines its own
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.summary()}>"

    def __rich__(self) -> str:
        from rich.markup import escape

        return escape(self.summary())

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython / Jupyter
        printer.text(repr(self))
