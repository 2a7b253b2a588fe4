"""restartctl: find and restart what a package upgrade left running on old code."""

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
