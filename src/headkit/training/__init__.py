"""Training: config, strategies (what trains, as data), the feature cache, the recipe (setup ->
fit), the loop, checkpoints, evaluation, few-shot, continued pretraining, reports and plots."""
