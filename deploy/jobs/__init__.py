"""One job per verb: what `deploy export`, `fuse`, `quantize`, `prune`, `debug`, `inspect` and `digits` do,
as plain functions that return a report.

Holds: :mod:`.export`, :mod:`.fuse`, :mod:`.quantize`, :mod:`.prune` (the verb) with :mod:`.prune_search`
(the latency-aware search) and :mod:`.recovery` (BN re-estimation, distillation), :mod:`.debug`,
:mod:`.inspection`, and the digits-trained nets (:mod:`.digits`, :mod:`.digits_accuracy`).

May import: ``deploy.harness`` and below. A job may call another job of this package (quantize reads
export's converter); the pipeline and the CLI sit above and call in.
"""
