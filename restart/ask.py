"""Mode ``ask``: the whole list of planned restarts once, then one question: yes (all), no (none), or pick.

Asked only on a terminal (:func:`interactive`): without one the policy's ``unattended_mode``
applies (:func:`choose_mode`), and an ``ask`` asked for anyway only lists, so the hook never
prompts without a terminal.  The answer is bounded by the run's deadline; no answer (in time, or
before the input ended) restarts nothing and leaves the list pending.
"""

from __future__ import annotations

import math
import os
import re
import select
import sys
import time
from collections.abc import Callable

from restart import TYPE_CHECKING, policy, report
from restart.plan import Action
from restart.text import printable

if TYPE_CHECKING:
    from typing import TextIO


def interactive() -> bool:
    return (sys.stdin.isatty() and sys.stdout.isatty()
            and os.environ.get("DEBIAN_FRONTEND") != "noninteractive")


def choose_mode(settings: policy.Settings, trigger: str, *, interactive: bool) -> str:
    """The policy's ``mode`` on a terminal, ``unattended_mode`` everywhere else; never ask without a terminal."""
    if trigger == "unattended-upgrades" or not interactive:
        return settings.unattended_mode
    return settings.mode


HELP = ("y: restart them all; n: restart none of them (they stay pending); p: pick which, by number "
        "(or type the numbers at once: 1 3-5); ?: this help")
_NUMBERS = re.compile(r"(\d{1,6})(?:-(\d{1,6}))?")


def picked(text: str, count: int) -> set[int] | None:
    """The numbers an admin typed ("1 3-5", "2,4"), each from 1 to ``count``; None when a word is not one."""
    chosen: set[int] = set()
    for word in text.replace(",", " ").split():  # the line read is at most 200 characters
        m = _NUMBERS.fullmatch(word)
        if m is None:
            return None
        first, last = int(m[1]), int(m[2] or m[1])
        if not 1 <= first <= last <= count:
            return None
        chosen.update(range(first, last + 1))
    return chosen


WAKE_EVERY = 0.25  # seconds: how soon a Ctrl-C is acted on while an answer is awaited, whatever the race


def _answer_ready(answers: TextIO, seconds: float) -> bool:
    """Whether an answer can be read before ``seconds`` pass (always, for input that is not a file).

    Awaited in slices: Python runs a signal handler only between its own steps, so a Ctrl-C that
    comes just before ``select`` goes to sleep (or reaches another thread) would otherwise wait out
    the whole deadline; after each slice the handler runs and the run stops as asked."""
    try:
        fd = answers.fileno()
    except (AttributeError, OSError, ValueError):
        return True
    end = time.monotonic() + max(seconds, 0.0)
    while True:
        left = end - time.monotonic()
        if select.select([fd], [], [], min(max(left, 0.0), WAKE_EVERY))[0]:
            return True
        if left <= WAKE_EVERY:
            return False


def chooser(answers: TextIO, prompts: TextIO, *, default_yes: bool = True,
            deadline: float | None = None) -> Callable[[list[Action]], list[bool | None]]:
    """The prompt: given the restarts planned, one answer for each, True (restart it), False (the admin
    said no, or did not pick it) or None (no answer: in time, or before the input ended)."""

    def line(question: str) -> str | None:
        prompts.write(question)
        prompts.flush()
        left = math.inf if deadline is None else deadline - time.monotonic()
        if not _answer_ready(answers, left):
            prompts.write("\nrestartctl: no answer in time: nothing is restarted\n")
            return None
        raw = answers.readline()
        if not raw:  # end of input: nobody is there to say yes
            prompts.write("\n")
            return None
        return raw.strip().lower()[:200]

    def choose(actions: list[Action]) -> list[bool | None]:
        count = len(actions)
        prompts.write(f"restartctl: {count} restart{'s' if count != 1 else ''} planned:\n")
        for i, a in enumerate(actions, 1):
            prompts.write(f"restartctl: {i:>4}  {printable(a.group.name or '?')}: {report.command(a.argv or ())}"
                          f" ({printable(a.reason)})\n")
        choices = "[Y/n/p/?]" if default_yes else "[y/N/p/?]"
        while True:
            answer = line(f"restartctl: restart {'it' if count == 1 else 'them'}? y: all, n: none, p: pick "
                          f"{choices} ")
            if answer is None:
                return [None] * count
            if answer in ("y", "yes") or (answer == "" and default_yes):
                return [True] * count
            if answer in ("n", "no") or answer == "":
                return [False] * count
            while answer in ("p", "pick"):
                answer = line(f"restartctl: which (numbers from 1 to {count}, e.g. 1 3-5; Enter: none)? ")
                if answer is None:
                    return [None] * count
                if picked(answer, count) is None:
                    prompts.write(f"restartctl: not numbers from 1 to {count}: {printable(answer)}\n")
                    answer = "p"
            chosen = picked(answer, count) if answer not in ("?", "help") else None
            if chosen is not None:
                return [i in chosen for i in range(1, count + 1)]
            prompts.write(f"restartctl: {HELP}\n")
    return choose
