"""Models: loading HF checkpoints safely, and the offline tokenizer and tiny-model factory."""
