"""The stages: one module per stage, each a readable `main(cfg)` (config, build, loop, save) over the
library packages below it, like torchtune's recipes and TRL's scripts.

    writer    -> <run>/writer/                 pseudocot synth writer
    questions -> <run>/questions/              pseudocot synth questions
    data      -> <run>/data/, tokenizer/       pseudocot data
    synth     -> <run>/synth/                  pseudocot synth
    finetune  -> <run>/teacher/, base/         pseudocot finetune [--role teacher]
    distill   -> <run>/distill/<stage>/        pseudocot distill
    grpo      -> <run>/grpo/                   pseudocot grpo
    router    -> <run>/router/                 pseudocot router
    eval      -> <run>/eval/                   pseudocot eval
    run       every stage in order, skipping the ones whose key (`pseudocot.freshness`) is current

`table` is the one table of stages (name, function, key, outputs, when enabled, what it reads) that
`run`, the CLI and `pseudocot stages` read.

Library packages never import a stage; a stage may use anything below it (the router stage runs
the pipeline to collect traces). Every stage starts with `prepare(cfg)`.
"""

from __future__ import annotations

from pseudocot.config.schema import Config


def prepare(cfg: Config) -> None:
    """What every stage sets up first, whoever calls it: torch's CPU threads (`run.threads`), and, when stderr is
    not a terminal (a log), no per-step bars from the libraries (pseudocot prints its own progress lines)."""
    from pseudocot.models.loading import set_threads
    from pseudocot.progress import is_terminal

    set_threads(cfg.run.threads)
    if not is_terminal():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards": a redrawn bar per model
