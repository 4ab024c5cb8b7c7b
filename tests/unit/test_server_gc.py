"""Start-up objects are left out of the cyclic garbage collector's work
(salus.server.run.freeze_startup_objects, called once the app has started)."""

from __future__ import annotations

import gc

from salus.server.run import _Server, freeze_startup_objects


def test_startup_objects_are_frozen_and_garbage_is_not() -> None:
    gc.unfreeze()
    gc.disable()  # no automatic collection between the steps below
    try:

        class Cycle:
            pass

        garbage = Cycle()
        garbage.self = garbage  # type: ignore[attr-defined]
        del garbage
        kept = [Cycle() for _ in range(100)]
        freeze_startup_objects()
        assert gc.get_freeze_count() >= len(kept)
        gc.unfreeze()  # the frozen objects back in view of gc.get_objects()
        cycles = [o for o in gc.get_objects() if type(o) is Cycle]
        # The collection before the freeze freed the cycle: it was not frozen.
        assert len(cycles) == len(kept)
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_server_freezes_after_its_startup() -> None:
    source = _Server.startup.__code__.co_names
    assert "freeze_startup_objects" in source
