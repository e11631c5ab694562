"""Auto-fit: from "my images and a time budget" to the best model this machine can give.

``ImagePredictor(label=...).fit(train_data, time_limit=600, presets="medium_quality")`` and
``cnnlab fit --data SOURCE --time-limit 10m`` run :func:`cnnlab.autofit.fit.auto_fit`:

1. load the data (images of mixed sizes are decoded at one size: profile.py) and hold out a
   validation split when none is given (profile.VALIDATION_SHARE);
2. plan (planner.py): measure this machine's speed for each candidate of the preset with the
   code that trains it (speed.py; candidates.py, presets.py) in at most 5% of the budget,
   predict each one's time and validation accuracy (priors.py, corrected by this project's own
   history of fits: history.py), choose (fast-net seeds included) and share out the budget;
   plan.json;
3. run the chosen candidates, each bounded by its share of the deadline (runner.py), each
   finished one appended to the priors' history (history.py), with a
   greedy soup of the top-k checkpoints where the trainer keeps them (soup_step.py); time left
   goes to another seed of the best (budget.py); state.json lets a killed fit resume (state.py);
4. an ensemble of the candidates weighted on validation when it helps (ensemble.py);
5. the leaderboard, fit.json, report.md and the error-analysis figure (leaderboard.py,
   folder.py, report.py), everything within ``time_limit x 1.05``.
"""
