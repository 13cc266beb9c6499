"""The prepare progress bar: files done, tokens and tokens/s (rich)."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class PrepareProgress:
    def __init__(self, files: int, enabled: bool = True):
        self.enabled, self.tokens, self.t0 = enabled, 0, time.monotonic()
        self._bar = Progress(TextColumn("[bold]prepare[/bold] files"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[tokens]:,} tokens  {task.fields[rate]:,.0f} tokens/s"),
                             TimeElapsedColumn(), disable=not enabled, transient=False)
        self._task = self._bar.add_task("prepare", total=files, tokens=0, rate=0.0)

    def __enter__(self) -> "PrepareProgress":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def advance(self, tokens: int) -> None:
        self.tokens += tokens
        self._bar.update(self._task, advance=1, tokens=self.tokens, rate=self._rate())

    def tick(self) -> None:
        self._bar.update(self._task, rate=self._rate())

    def _rate(self) -> float:
        return self.tokens / max(time.monotonic() - self.t0, 1e-9)
