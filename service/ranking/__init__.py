"""The ranking core shared by training, evaluation and the gateway: prompts, answer scoring, the
engine that runs the three tasks, and fusion.

No web framework and no HTTP here (the engine sees the LLM through a small protocol), and no I/O
except `LearnedFusion.save` / `load`, so every caller runs the very same code.
"""
