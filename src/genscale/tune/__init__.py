"""Tuning: an Optuna search over config keys whose trials are ordinary runs pruned on their metric curve
(search.py, space.py, report.py), and the train-until-pass loop built on it (until.py)."""
