"""Stage 4, evaluation: engine runs through vLLM, the serving-task validation and the serving policy
chosen on validation users, the offline report, variant pairs, ablations, the replay through the
gateway, LM signals and the learning curve (`workflow.run_tune` is `make tune`: the tuning stage's
export, then its validation and policy)."""
