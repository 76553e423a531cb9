"""Models: loading HF checkpoints safely (`loading`, with the CPU thread setting and the CPU bf16
check), GGUF import (`importing`), LoRA (`lora`), students cut from their teacher (`cut`), and the
offline tokenizer and tiny-model factory (`tokenizer`, `tiny`)."""
