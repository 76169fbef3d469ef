"""A run's skeleton, shared by every runner: :mod:`~fredflow.run.plan` (what to fetch, in which batches,
kept in ``plan.json``), :mod:`~fredflow.run.batches` (the generator), :mod:`~fredflow.run.execute`
(plan → fan out → merge in one transaction; the summary)."""
