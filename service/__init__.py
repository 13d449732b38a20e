"""Online RecRanker gateway (POST /rerank) and the ranking core it shares with training."""
