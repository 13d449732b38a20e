"""Stage 3, instruction tuning: adaptive user sampling, the instruction set (prompts, honest hints,
item tokens), LoRA on the base model and the merged export vLLM serves (`pipeline.tune_export`).
Reads the data and backbone stages; nothing here reads the evaluation stage."""
