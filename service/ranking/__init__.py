"""The ranking core shared by training, evaluation and the gateway: prompts, answer scoring, the
engine that runs the tasks (`engine`), their utilities (`utilities`), the learned fusion's features
(`features`) and the one fusion (`fusion.fuse`).

No web framework and no HTTP here (the engine sees the LLM through a small protocol), and no I/O
except `LearnedFusion.save` / `load`, so every caller runs the very same code. Fitting and
selecting a fusion is offline work: `training/evaluation/fusion_selection.py`.
"""
