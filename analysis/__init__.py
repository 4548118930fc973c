"""Study analysis: read a study's MLflow runs and write a report (``python -m analysis.report``).

* :mod:`analysis.loader` - the runs of a study (search and retraining) as one pandas DataFrame, with
  metric histories, artifacts and the Optuna study; local SQLite store or tracking server.
* :mod:`analysis.tables` - leaderboard, Pareto front, search cost and Optuna tables (pure pandas).
* :mod:`analysis.report` - the HTML report folder, logged to the study's parent MLflow run.
* :mod:`analysis.plots` - the study-level pictures (cell drawings and reduction histories are in
  :mod:`bnas.visualize`, shared with the platform).

Reads the schema through its owner :mod:`bnas.platform.tracking_schema` (names, store probe,
paginated reads, the leaderboard aggregation), which imports neither Ray nor Optuna; nothing here
imports Ray or sets environment variables.
"""
