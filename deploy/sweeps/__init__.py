"""`deploy sweep`: a matrix of models × verbs × backends from one TOML file, each cell a child ``deploy``
process, run on Ray or a local pool, gathered into one table and page.

Holds: :mod:`.matrix` (reading and expanding the file) and :mod:`.run` (running the cells, the results).

May import: ``deploy.pipelines`` (its page style) and below; it runs verbs through the CLI in children, so it
imports no verb.
"""
