"""The proof: running artifacts side by side and judging what they compute and how fast.

Holds: output comparison and tolerance presets (:mod:`.compare`), ``deploy check``'s engine (:mod:`.check`),
the one interleaved timer and ``deploy bench`` (:mod:`.bench`), statistics with intervals (:mod:`.stats`),
memory in a fresh process (:mod:`.memory`), the one held-out judge (:mod:`.heldout`), terminal tables and JSON
reports (:mod:`.report`) and charts (:mod:`.plot`).

May import: ``deploy.backends``, ``deploy.artifacts`` and below — never a verb's job.
"""
