"""`deploy pipeline`, `deploy verify` and the demo: every candidate made by the jobs, certified on held-out
data, timed side by side, chosen per backend, written with a manifest that CI can prove again.

Holds: :mod:`.run` (the pipeline), :mod:`.candidates`, :mod:`.certify` (the budget; judging is
:mod:`deploy.harness.heldout`), :mod:`.pareto` (the choice), :mod:`.manifest` with its JSON schema,
:mod:`.report_html`, :mod:`.verify`, and the demo (:mod:`.demo`, :mod:`.demo_index`).

May import: ``deploy.jobs`` and below (it drives the jobs, so it sits above them). Named in the plural so
that ``deploy.pipeline`` stays the API function (``deploy.sweeps`` likewise).
"""
