"""The platform around the core: Ray Tune runs the trials, Optuna samples them, MLflow records them.

The only package in ``bnas`` that imports ray, optuna or mlflow; the core never imports it.

* :mod:`~bnas.platform.study`       -- a study YAML -> a checked :class:`~bnas.platform.study.StudySpec`
* :mod:`~bnas.platform.space`       -- the sampled settings (define-by-run, conditional parameters)
* :mod:`~bnas.platform.trainables`  -- the Tune function trainables around ``run_search`` / ``retrain``
* :mod:`~bnas.platform.tracking`    -- MLflow: the single writer and the run schema
* :mod:`~bnas.platform.orchestrate` -- cluster, resources, Optuna searcher, ASHA, stages, resume

Entry point: ``run.py`` at the repository root.
"""
