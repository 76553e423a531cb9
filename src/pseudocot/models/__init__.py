"""Models: loading HF checkpoints safely (`loading`, with the CPU thread setting), LoRA (`lora`), and
the offline tokenizer and tiny-model factory (`tokenizer`, `tiny`)."""
