"""Study analysis: read a study's MLflow runs and write a report (``python -m analysis.report``).

* :mod:`analysis.loader` - the runs of a study (search and retraining) as one pandas DataFrame, with
  metric histories, artifacts and the Optuna study; local SQLite store or tracking server.
* :mod:`analysis.report` - leaderboard, Pareto front, search cost and Optuna tables; the HTML report
  folder, logged to the study's parent MLflow run.
* :mod:`analysis.plots` - the study-level pictures (cell drawings and reduction histories are in
  :mod:`bnas.visualize`, shared with the platform).

Reads the schema written by :mod:`bnas.platform.tracking`; imports neither Ray nor the platform.
"""
