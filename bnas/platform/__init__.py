"""The platform around the core: Ray Tune runs the trials, Optuna samples them, MLflow records them.

The only package in ``bnas`` that imports ray, optuna or mlflow; the core never imports it. Read it
top-down from ``run.py``:

* :mod:`~bnas.platform.study`           -- a study YAML -> a checked :class:`~bnas.platform.study.StudySpec`
* :mod:`~bnas.platform.study_file`      -- the study file's typed sections (sampler, scheduler, resources...)
* :mod:`~bnas.platform.space`           -- the sampled settings (define-by-run, conditional parameters)
* :mod:`~bnas.platform.orchestrate`     -- :func:`~bnas.platform.orchestrate.run_study`: preflight checks,
  then the steps below in order
* :mod:`~bnas.platform.cluster`         -- joining or starting the Ray cluster; per-trial resources
* :mod:`~bnas.platform.stages`          -- the search and the retraining stage (Tune experiments, resume)
* :mod:`~bnas.platform.searcher`        -- Optuna through Tune: truthful trial states, the SQLite storage
* :mod:`~bnas.platform.trainables`      -- the Tune function trainables around ``run_search`` / ``retrain``
* :mod:`~bnas.platform.callbacks`       -- the driver-side Tune callback that records trials in MLflow
* :mod:`~bnas.platform.tracking`        -- ``StudyTracker``, the single MLflow writer
* :mod:`~bnas.platform.tracking_schema` -- the MLflow schema, store URIs and probe, paginated reads (no Ray:
  ``analysis/`` reads through it)
* :mod:`~bnas.platform.leaderboard`     -- one row per derived architecture, for the summary and the report
* :mod:`~bnas.platform.summary`         -- the console summary at the end of a study

Entry point: ``run.py`` at the repository root.
"""
