"""The aggregator freezes what its imports made and collects young objects less often
(cli/aggregator.settle_collector); what it makes after is collected as ever. In a child
process: freezing is for the whole interpreter, and pytest's must stay as it is."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from flotilla.cli.aggregator import YOUNG_COLLECTION_EVERY

PROBE = textwrap.dedent(
    """
    import gc, json, weakref
    import flotilla.fl.aggregator.main  # what the aggregator imports before it settles
    from flotilla.cli.aggregator import settle_collector

    class Node:
        pass

    before = Node(); before.me = before  # a cycle made before: frozen with the imports
    settle_collector()
    after = Node(); after.me = after  # one made after: garbage once dropped
    seen_before, seen_after = weakref.ref(before), weakref.ref(after)
    del before, after
    gc.collect()
    print(json.dumps({
        "frozen": gc.get_freeze_count(),
        "threshold": gc.get_threshold(),
        "before_kept": seen_before() is not None,
        "after_kept": seen_after() is not None,
    }))
    """
)


def test_the_imports_are_frozen_and_what_comes_after_is_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(done.stdout)
    assert seen["frozen"] > 50_000  # torch, aiohttp and the rest
    assert seen["threshold"][0] == YOUNG_COLLECTION_EVERY
    assert seen["threshold"][1:] == [10, 10]  # older generations as Python has them
    assert seen["before_kept"]  # frozen: never walked again
    assert not seen["after_kept"]
