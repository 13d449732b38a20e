"""Offline RecRanker pipeline: data -> backbones -> sampling -> instructions -> tuning -> export -> eval."""
