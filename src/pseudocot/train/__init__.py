"""Training stages, thin over HF Trainer: supervised fine-tuning (`sft`) and the distillation chain
(`distill`, with its teacher cache in `teacher_cache`). Shared pieces are in `common`."""
