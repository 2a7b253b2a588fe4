"""restartctl: find and restart what a package upgrade left running on old code."""

from __future__ import annotations

import gc

__version__ = "0.1.0"


class Importing:
    """No garbage collection while modules are imported: they make tens of thousands of objects (the
    classes, the compiled patterns), none of them garbage, and the collector ran some 20 times over
    them in every run (~3 ms of the apt hook's).  It runs again, as always, once they are imported,
    but no longer over them: every object there is by then is set aside for good (``gc.freeze``;
    still freed when its last reference goes), or the first collections after the imports went over
    them all again (2-6 ms of every ``apply`` before its first restart)."""

    def __enter__(self) -> None:
        self.collecting = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.collecting:
            gc.freeze()
            gc.enable()


# typing is not imported at run time (a module's ``from typing import ...`` is under ``if TYPE_CHECKING:``):
# its import (2.2 ms) and its check of each NamedTuple field (2.4 ms) were ~5 ms of every run, of
# ``restartctl apply``'s before its first restart and of the apt hook's.  mypy takes any ``TYPE_CHECKING`` as
# true, so it checks against typing's own NamedTuple, Generic and TypeVar (fields, defaults last, no
# namedtuple attribute overwritten); the run uses what stands for them below (tests/test_layout.py).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Generic as Generic
    from typing import NamedTuple as NamedTuple
    from typing import TypeVar as TypeVar
else:
    from collections import namedtuple

    def TypeVar(name: str) -> str:  # only ever a Generic's parameter at run time
        return name

    class Generic:
        def __class_getitem__(cls, parameters: object) -> type:  # Generic[T] among the bases: this class
            return cls

    class _Records(type):
        """``class Point(NamedTuple): x: int`` made as typing makes it, ``collections.namedtuple``'s class with
        the body's defaults, docstring and methods, but without typing's check of each field's annotation:
        under ``from __future__ import annotations`` each is a string typing compiled into a ForwardRef
        nothing reads (the 38 classes before apply's first restart: 4.4 ms made by typing, 2.0 ms here)."""

        def __new__(cls, name: str, bases: tuple[type, ...], body: dict[str, object]) -> type:
            fields = body.get("__annotations__", {})
            made = namedtuple(name, fields, defaults=[body[f] for f in fields if f in body], module=body["__module__"])
            for key, value in body.items():
                if key not in fields:
                    setattr(made, key, value)
            return made

    NamedTuple = type.__new__(_Records, "NamedTuple", (), {})
