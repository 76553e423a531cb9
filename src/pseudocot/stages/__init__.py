"""The stages: one module per stage, each a readable `main(cfg)` (config, build, loop, save) over the
library packages below it, like torchtune's recipes and TRL's scripts.

    data      -> <run>/data/, tokenizer/       pseudocot data
    finetune  -> <run>/teacher/, base/         pseudocot finetune [--role teacher]
    distill   -> <run>/distill/<stage>/        pseudocot distill
    router    -> <run>/router/                 pseudocot router
    eval      -> <run>/eval/                   pseudocot eval
    run       every stage in order, skipping the ones whose key (`pseudocot.freshness`) is current

Library packages never import a stage; a stage may use anything below it (the router stage runs
the pipeline to collect traces). Every stage starts with `prepare(cfg)`.
"""

from __future__ import annotations

from pseudocot.config.schema import Config


def prepare(cfg: Config) -> None:
    """What every stage sets up first, whoever calls it: torch's CPU threads (`run.threads`)."""
    from pseudocot.models.loading import set_threads

    set_threads(cfg.run.threads)
