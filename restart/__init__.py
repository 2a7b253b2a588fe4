"""restartctl: find and restart what a package upgrade left running on old code."""

import gc

__version__ = "0.1.0"


class Importing:
    """No garbage collection while modules are imported: they make tens of thousands of objects (the
    classes, the compiled patterns), none of them garbage, and the collector ran some 20 times over
    them in every run (~3 ms of the apt hook's).  It runs again, as always, once they are imported."""

    def __enter__(self) -> None:
        self.collecting = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.collecting:
            gc.enable()


with Importing():
    import collections
    from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:

    def NamedTuple(*args: object, **kwargs: object) -> NoReturn:  # stands for typing.NamedTuple
        """``typing.NamedTuple``'s class syntax (``class Point(NamedTuple): x: int``), made without checking
        each field's annotation: under ``from __future__ import annotations`` every annotation is a string,
        which typing compiles into a ForwardRef that nothing here ever reads (the 34 classes' 160 fields:
        ~2.5 ms of every run, a hook's included).  The class is ``collections.namedtuple``'s, as typing's is,
        with the same rules (defaults last, no overwritten namedtuple attributes)."""
        raise TypeError("restart.NamedTuple supports only the class syntax")

    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                             "_make", "_replace", "_asdict", "_source"})
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _NamedTupleMeta(type):
        def __new__(mcls, typename: str, bases: tuple[type, ...], ns: dict[str, Any]) -> type:
            types = ns.get("__annotations__", {})
            defaults: list[str] = []
            for name in types:
                if name in ns:
                    defaults.append(name)
                elif defaults:
                    raise TypeError(f"Non-default namedtuple field {name} cannot follow default "
                                    f"field{'s' if len(defaults) > 1 else ''} {', '.join(defaults)}")
            made = collections.namedtuple(typename, list(types), defaults=[ns[n] for n in defaults],
                                          module=ns["__module__"])
            made.__annotations__ = made.__new__.__annotations__ = dict(types)
            for key, value in ns.items():
                if key in _PROHIBITED:
                    raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
                if key not in _SPECIAL and key not in made._fields:
                    setattr(made, key, value)
                    set_name = getattr(type(value), "__set_name__", None)
                    if set_name is not None:
                        set_name(value, made, key)
            return made

    _NamedTupleBase = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
    NamedTuple.__mro_entries__ = lambda bases: (_NamedTupleBase,)
