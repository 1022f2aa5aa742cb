"""Every MLflow tag and artifact name that more than one module writes or reads, in one place.

A sweep's parent run gets :data:`SWEEP_ARTIFACTS` from the verdict, and ``tunebudget report``
fetches exactly those (``tests/test_halving.py`` checks a real sweep's parent run against the list);
the run tags here are written by the sweep and the trainer's logging and read back by ``export``,
``report`` and ``--resume``.
"""

from __future__ import annotations

# ---- MLflow's own tags -------------------------------------------------------------------------
PARENT_ID_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"
#: MLflow's experiment kind (values of its UI's ExperimentKind): classic training, not GenAI traces.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"

# ---- tunebudget's run tags ----------------------------------------------------------------------
#: The run's resolved policy as compact JSON (export reads it back).
POLICY_TAG = "tunebudget.policy"
#: What a run is: ``sweep`` (a sweep's parent run), ``trial`` (a search or confirmation run), ``train``.
ROLE_TAG = "tunebudget_role"
ROLE_SWEEP, ROLE_TRIAL, ROLE_TRAIN = "sweep", "trial", "train"
SWEEP_NAME_TAG = "sweep_name"
#: The verdict's sentence on a parent run (or why the sweep failed).
VERDICT_TAG = "verdict"
METRIC_TAG, MODE_TAG = "metric", "mode"
#: A trial run's Ray Tune trial id (what --resume matches runs by) and its stage (search, confirm).
TRIAL_ID_TAG = "trial_id"
STAGE_TAG = "stage"
DIVERGED_TAG = "diverged"
#: A run's policy digest (the same policy, the same digest: trials, the parent's best, train runs).
POLICY_DIGEST_TAG = "policy_digest"

# ---- a trial run's tags (written by the sweep's callback; read by tests, the UI and its users) ------
#: search trials: the baseline's name ("" for a searched one); confirmation runs: the candidate's
BASELINE_TAG, CANDIDATE_TAG = "baseline", "candidate"
#: confirmation runs: "true", the seed and (in a race) the round
CONFIRM_TAG, SEED_TAG, ROUND_TAG = "confirm", "seed", "round"
#: restart successive halving: the rung, its budget and the configuration's key
RUNG_TAG, RUNG_BUDGET_TAG, CONFIG_TAG = "rung", "rung_budget", "config"
#: how Tune saw the trial end, where it ran, and a failed trial's error
TRIAL_STATUS_TAG, NODE_TAG, HOSTNAME_TAG, DEVICE_TAG, ERROR_TAG = (
    "trial_status", "ray_node_id", "hostname", "device", "error")

# ---- a sweep's parent run: its verdict (written by the verdict stage) ---------------------------
BEATS_TAG, VERDICT_TEST_TAG, BEST_CANDIDATE_TAG, BEST_DIGEST_TAG = (
    "beats_baseline", "verdict_test", "best_candidate", "best_policy_digest")

# ---- artifacts of a sweep's parent run (written by the verdict, fetched by `tunebudget report`) ----
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
BEST_POLICY = "best_policy.yaml"
OPTIMIZATION_HISTORY = "optimization_history.png"
PARAM_IMPORTANCE = "param_importance.png"
VALIDATION_VS_TIME = "validation_vs_time.png"
#: restart sweeps only: how the rungs' rankings agree
RANK_CORRELATION = "rank_correlation.png"
SWEEP_ARTIFACTS = (SUMMARY_MD, SUMMARY_JSON, BEST_POLICY, OPTIMIZATION_HISTORY, PARAM_IMPORTANCE,
                   VALIDATION_VS_TIME, RANK_CORRELATION)

# ---- artifacts of a logged `tunebudget train` run (beside its MLflow model) ------------------------
TRAIN_SUMMARY = "summary.json"
TRAIN_POLICY = "policy.yaml"
