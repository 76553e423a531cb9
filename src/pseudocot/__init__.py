"""pseudocot: Pseudo Chain-of-Thought induced fine-tuning (Srinivasa et al.).

A base LLM answers; a router decides whether a Tiny Thought Model should write another thought;
the base answers again with the thoughts in its context. See README.md and `pseudocot --help`.
"""

__version__ = "0.1.0"
