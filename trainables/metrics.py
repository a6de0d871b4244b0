"""Metric names: the keys of a level's metrics.json, timing.json and a transfer's result.json.

One home for each spelling, so the trainables that write these files and the
orchestrator and analyses that read them (and Ray Tune and MLflow, which log them)
cannot drift apart.
"""

from __future__ import annotations

# a level's metrics.json
LEVEL = "level"
SPARSITY = "sparsity"  # of the mask the level trained with, over the prunable weights
DENSITY = "density"  # 1 - sparsity, measured on the mask itself
METRIC = "metric"  # the name of the task's validation metric ...
SCORE = "score"  # ... and its value
STEPS = "steps"  # optimizer steps of the round
STEPS_TRAINED = "steps_trained"  # of those, the ones this call performed (the rest came from a checkpoint)
TRAIN_LOSS = "train_loss"  # mean loss over the last tenth of the round
TRAIN_SECONDS = "train_seconds"
SECONDS_PER_STEP = "seconds_per_step"
RESUMED_FROM_STEP = "resumed_from_step"  # the checkpoint's step, or None
WORKERS = "workers"  # processes that trained the level
NEXT_MASK_RANK_DIGESTS = "next_mask_rank_digests"  # every rank's SHA-256 of the next level's mask
LEVEL_SECONDS = "level_seconds"  # wall time of the level, evaluation and saving included

# the tasks' validation metrics (each task reports some of them; METRIC names the one it is judged by)
PERPLEXITY = "perplexity"
LOSS = "loss"
ACCURACY = "accuracy"
F1 = "f1"
PRECISION = "precision"
RECALL = "recall"
TASK_METRICS = (PERPLEXITY, LOSS, ACCURACY, F1, PRECISION, RECALL)

# a cell's timing.json (also: STEPS_TRAINED, WORKERS)
SECONDS = "seconds"
PEAK_RSS_BYTES = "peak_rss_bytes"  # the main process's peak resident memory over its life

# a transfer job's result.json (also: LEVEL, SPARSITY, DENSITY, METRIC, SCORE, the task's metrics,
# STEPS, STEPS_TRAINED, RESUMED_FROM_STEP, SECONDS)
JOB = "job"
KIND = "kind"
SOURCE = "source"
TASK = "task"
TARGET = "target"
SEED = "seed"
MASK_SHA256 = "mask_sha256"
SAME_AS = "same_as"  # a job that trains exactly what a cell's level did: that level (<cell id>/level_<k>), not rerun
