"""Models: loading HF checkpoints safely (`loading`, with the CPU thread setting and the CPU bf16
check), GGUF import (`importing`), LoRA (`lora`), students cut from their teacher (`cut`), a model's
real output head (`heads`: bias, scaling, soft-cap), the offline tokenizer and tiny-model factory (`tokenizer`, `tiny`),
and what a result was computed on (`environment`: machine, kernels, threads, library versions)."""
