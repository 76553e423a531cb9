"""pseudocot: Pseudo Chain-of-Thought induced fine-tuning (Srinivasa et al.).

A base LLM answers; a router decides whether a Tiny Thought Model should write another thought;
the base answers again with the thoughts in its context. See README.md and `pseudocot --help`.
"""

import warnings

__version__ = "0.1.0"

# peft 0.21 (PeftModel.__init__, __getattr__) and TRL 1.16 (unwrap_model_for_generation) read
# `model.is_gradient_checkpointing`, which transformers 5.x deprecates for `is_activation_checkpointing` with a
# FutureWarning on every read: nothing a user of pseudocot can act on. This one message only; any other FutureWarning
# shows (and fails the test run).
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
