"""The ranking core shared by training, evaluation and the gateway: prompts, answer scoring, fusion.

Nothing here does I/O or imports a web or ML framework, so every caller runs the very same code.
"""
