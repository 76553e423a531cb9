"""Stage freshness: one key per stage, the only way any command decides whether a stage's output
is current, may be resumed, or must be made again.

A stage's key is the hash of (a) the config it reads (its own section, `run.seed` where it trains,
and the pipeline settings that shape what it sees, `pipeline_settings`) and (b) a content fingerprint
of every input it reads: data files, upstream model folders, the tokenizer. Not modification times:
a file rewritten with the same bytes keeps its key, and a changed file changes it.

Each stage's key function says in its docstring what it reads (`data_key`, `synth_key`, `finetune_key`
for the teacher and the base, `distill_key`, `grpo_key`, `router_key`, `eval_key`); the table of stages
(`pseudocot.stages.table`) names the function of each stage, and `pseudocot stages` prints them all.

`pseudocot run` records the keys in `run_state.json` and skips a stage finished with its current key.
The stages themselves (and so `pseudocot finetune`, `distill`, `router`, `eval` run alone) use the
same keys: a training stage writes its key into `metrics.json` (done) and `checkpoints/key.txt` (may
resume), the router into `router.json` and, for its traces, `traces/key.txt`, and evaluation keeps
its answers per task key and system key. What carries another key is made again: after new data or
a new `run.seed`, `pseudocot finetune` trains again instead of skipping or resuming old checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pseudocot.config.schema import Config, DistillStageConfig, EvalTaskConfig, ModelSpec, PipelineConfig, SystemConfig
from pseudocot.layout import METRICS, RunLayout

_MIB = 1 << 20


def key_data(value: Any) -> Any:
    """A config section as the plain data of a key: `dataclasses.asdict` but for the fields declared `repr=False`,
    which say how a stage runs and not what it computes (`train.fsdp`: FSDP trains what DDP trains). A section nested
    in other plain data goes into `digest` by its repr, which leaves them out as well. Anything else as it is."""
    if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return value

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.repr}
        if isinstance(v, (list, tuple)):
            return type(v)(plain(x) for x in v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return copy.deepcopy(v)

    return plain(value)


def generator_key(spec: Any) -> dict[str, Any] | None:
    """A `GeneratorConfig` (or None) as keys have named it since before `adapter` existed and while `extra_body` held
    `add_special_tokens: false` by default (now added where the text is chat-rendered), so a teacher's or judge's
    cached outputs keep their keys: `adapter` only when set, `extra_body` over that old default."""
    if spec is None:
        return None
    d = key_data(spec)
    if d.get("adapter") is None:
        d.pop("adapter", None)
    d["extra_body"] = {"add_special_tokens": False, **(d.get("extra_body") or {})}
    return d


def digest(value: Any) -> str:
    """A short stable hash of plain data (dataclasses included)."""
    blob = json.dumps(key_data(value), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Content fingerprints.
# --------------------------------------------------------------------------------------------


def _hash_file(h: Any, path: Path, whole: bool) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with path.open("rb") as f:
        if whole or size <= 4 * _MIB:
            for block in iter(lambda: f.read(_MIB), b""):
                h.update(block)
            return
        # Weights of gigabytes: the head (the safetensors header and the first tensors) and the tail
        # tell a retrained model of the same shape apart without reading all of it.
        h.update(f.read(_MIB))
        f.seek(-_MIB, os.SEEK_END)
        h.update(f.read())


def _fingerprint(path: str | os.PathLike[str] | None, model: bool) -> str | None:
    """None for no path, `missing:<path>` for a path that does not exist (a hub id, say), else the
    hash of the files that make it what it is (see the two functions below)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return f"missing:{p}"
    h = hashlib.sha256()
    if p.is_file():
        files = [p]
    elif model:  # the top level only: checkpoints/ and merged/ are not the model
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and f.name != METRICS)
    else:
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        _hash_file(h, f, whole=not model)
    adapter = p / "adapter_config.json"
    if model and adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if base and Path(base).resolve() != p.resolve():
            h.update(str(model_fingerprint(base)).encode())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike[str] | None) -> str | None:
    """A fingerprint of a data file's whole content (every file under it, for a folder)."""
    return _fingerprint(path, model=False)


def model_fingerprint(folder: str | os.PathLike[str] | None) -> str | None:
    """A fingerprint of a model folder: its top-level files (weights by head and tail, the rest whole),
    not `metrics.json` (timings) nor subfolders (checkpoints); an adapter adds its base model's."""
    return _fingerprint(folder, model=True)


# --------------------------------------------------------------------------------------------
# Which pipeline settings a reader depends on: the one list.
# --------------------------------------------------------------------------------------------

_BASE_PROMPTS = ("base_prompt", "base_prompt_with_thoughts", "system_prompt")
_TTM_PROMPTS = ("ttm_prompt", "ttm_continues_thoughts", "ttm_system_prompt", "thought_stop", "thought_max_new_tokens",
                "max_thoughts")
_RUNTIME = ("mode", "threshold", "batch_size", "kv_reuse", "base", "ttm", "router", "thought_samples", "resample_temperature")
"""Settings that never change a forced trace: how questions are batched (greedy batches equal one
question at a time), and which folders (their contents are fingerprinted instead)."""
PIPELINE_SETTINGS_ADDED = {"thought_samples": 1, "resample_temperature": 0.7}
"""Runtime settings newer than the first evaluations: they count in an answer's key only away from their defaults (at
which they change nothing), so cached answers stay valid."""


def pipeline_model(layout: RunLayout, role: str) -> Any:
    """What the pipeline's `role` (base or ttm) is, for a key: its folder's fingerprint, or the engine that serves it
    (its URL, model name and its tokenizer folder's fingerprint: what an engine's weights are is the server's to say)."""
    engine = layout.engine(role)
    if engine is not None:
        return {"base_url": engine.base_url, "model": engine.model, "tokenizer": model_fingerprint(engine.tokenizer)}
    return model_fingerprint(layout.base if role == "base" else layout.ttm)


def pipeline_settings(p: PipelineConfig, reader: str) -> dict[str, Any]:
    """The pipeline settings that shape what `reader` trains on or measures:

    - `base`: the base model trained with thoughts in its context (the prompts it is rendered with);
    - `ttm`: the TTM's own thoughts written alone (`base.thoughts_from`): its prompts, stops and lengths;
    - `traces`: forced traces (the router's training data): every setting but the runtime ones;
    - `eval`: answers in a chosen mode: the traces' settings plus the mode and threshold.
    """
    d = key_data(p)
    if reader == "base":
        return {k: d[k] for k in _BASE_PROMPTS}
    if reader == "ttm":
        return {k: d[k] for k in _TTM_PROMPTS}
    if reader == "traces":
        return {k: v for k, v in d.items() if k not in _RUNTIME}
    if reader == "eval":
        return {k: v for k, v in d.items() if k not in _RUNTIME or k in ("mode", "threshold")
                or (k in PIPELINE_SETTINGS_ADDED and v != PIPELINE_SETTINGS_ADDED[k])}
    raise ValueError(f"unknown pipeline reader {reader!r}")


# --------------------------------------------------------------------------------------------
# The keys.
# --------------------------------------------------------------------------------------------


def _tokenizer_input(spec: ModelSpec, layout: RunLayout) -> str | None:
    """The tokenizer a model spec trains with: its own folder, the checkpoint's (covered by the
    checkpoint's fingerprint), or the run's trained one for a preset."""
    if spec.tokenizer:
        return model_fingerprint(spec.tokenizer)
    if spec.path or spec.from_:
        return None  # the checkpoint's own (a cut student: its source's), covered by the weights' fingerprint
    return model_fingerprint(layout.tokenizer_dir)


def _data_inputs(layout: RunLayout, train_file: str | None, val_file: str | None, reasoning: bool = False) -> list[str | None]:
    """The train and val files a training stage reads; `reasoning`: the teacher or a distillation stage, whose
    training data is the synth stage's kept solutions when it is enabled."""
    train = layout.reasoning_train(train_file) if reasoning else (train_file or layout.split("train"))
    return [file_fingerprint(train), file_fingerprint(val_file or layout.split("val"))]


def _source_files(cfg: Config) -> list[Any]:
    out: list[Any] = []
    layout = RunLayout.of(cfg)
    for s in cfg.data.sources:
        if s.format == "questions":  # the questions stage's splits
            out += [file_fingerprint(layout.questions_file(f"{split}.jsonl")) for split in ("train", "val", "test")]
        for split in ("train", "val", "test"):
            path = getattr(s, split)
            if path:
                out.append(file_fingerprint(path.split(":", 1)[0] if s.format == "hf_disk" else path))
    return out


def finetune_key(cfg: Config, role: str) -> str:
    """The key of `pseudocot finetune --role <role>` (the teacher and base stages): its section, `run.seed`, the base
    prompts (with thoughts_in_context), train/val files (the teacher's: synth's kept solutions when enabled), the
    tokenizer and the pretrained weights; with `base.thoughts_from` ttm or mix, also the Tiny Thought Model and the
    settings it writes its thoughts with (`ttm_thoughts_key`)."""
    layout = RunLayout.of(cfg)
    f = cfg.teacher if role == "teacher" else cfg.base
    return digest({
        "stage": role, "own": f, "seed": cfg.run.seed,
        "prompts": pipeline_settings(cfg.pipeline, "base") if f.thoughts_in_context else None,
        "data": _data_inputs(layout, f.train_file, f.val_file, reasoning=role == "teacher"),
        "tokenizer": _tokenizer_input(f.model, layout), "weights": model_fingerprint(f.model.path),
        **({"ttm": ttm_thoughts_key(cfg)} if f.thoughts_from != "gold" else {}),
    })


def ttm_thoughts_key(cfg: Config) -> str:
    """The key of the TTM's thoughts on the base model's training questions: the TTM before any GRPO, the pipeline
    settings it writes with, the questions, how many and at what temperature, `run.seed`."""
    layout = RunLayout.of(cfg)
    b = cfg.base
    return digest({"stage": "ttm-thoughts", "ttm": model_fingerprint(layout.distilled_ttm),
                   "pipeline": pipeline_settings(cfg.pipeline, "ttm"), "questions": file_fingerprint(b.train_file or layout.split("train")),
                   "count": b.ttm_questions, "temperature": b.ttm_temperature, "seed": cfg.run.seed,
                   # Sampled thoughts also depend on how the questions are batched (each batch its own seed) and on
                   # the decoder (KV-reusing or HF generate); greedy ones do not.
                   "sampling": {"batch_size": cfg.pipeline.batch_size, "kv_reuse": cfg.pipeline.kv_reuse}
                   if b.ttm_temperature > 0 else None})


def distill_stage_key(cfg: Config, stage: DistillStageConfig, teacher: str | os.PathLike[str]) -> str:
    """The key of one distillation stage, given the folder of its teacher (stage i-1's student)."""
    layout = RunLayout.of(cfg)
    common = {k: v for k, v in key_data(cfg.distill).items() if k not in ("teacher", "stages", "ce_only_baseline")}
    return digest({
        "stage": "distill", "own": stage, "distill": common, "seed": cfg.run.seed,
        "teacher": model_fingerprint(teacher)
        if stage.needs_teacher() or stage.teacher_writes or stage.student.from_ == "teacher" else None,
        "data": _data_inputs(layout, stage.train_file, stage.val_file, reasoning=True),
        "tokenizer": _tokenizer_input(stage.student, layout),
        "weights": model_fingerprint(stage.student.path if stage.student.from_ in (None, "teacher") else stage.student.from_),
    })


def teacher_written_key(cfg: Config, stage: DistillStageConfig, teacher: str | os.PathLike[str], dtype: str) -> str:
    """The key of the solutions a distillation stage's teacher writes (`teacher_writes`): the teacher's weights and
    dtype, the system prompt, the length and the batch. Not the questions (rows are matched by id and text), nor
    the checks (the filter runs again each time the stage trains)."""
    w = stage.teacher_writes
    assert w is not None
    return digest({"stage": "distill-written", "weights": model_fingerprint(teacher), "dtype": dtype,
                   "system_prompt": cfg.distill.system_prompt, "max_new_tokens": w.max_new_tokens, "batch_size": w.batch_size})


def synth_generation_key(cfg: Config) -> str:
    """The key of the synth stage's candidates: who writes them (a local teacher's weights, an endpoint's
    URL and model), the prompts and the sampling. How requests are sent (concurrency, retries, timeout)
    is not in it, nor are the questions (rows are matched to questions by id and text), nor the checks."""
    s, t = cfg.synth, cfg.synth.teacher
    teacher = None
    if t is not None:
        runtime = ("concurrency", "max_retries", "timeout_seconds", "api_key_env") + (() if t.path else ("batch_size",))
        teacher = {k: v for k, v in generator_key(t).items() if k not in runtime}
    return digest({"stage": "synth-candidates", "teacher": teacher, "weights": model_fingerprint(t.path) if t and t.path else None,
                   "prompt": [s.prompt, s.system_prompt], "sampling": [s.temperature, s.top_p, s.max_new_tokens, s.stop, s.seed],
                   "chunk": s.chunk_questions if t and t.path else None})


def questions_generation_key(cfg: Config, retry: bool = False) -> str:
    """The key of the teacher's replies to document chunks (first tries, or second tries at malformed replies): who
    writes, the prompts and the sampling. Rows are matched to chunks by their span and text, so the documents and
    the chunking are not in it."""
    s, d, t = cfg.synth, cfg.synth.documents, RunLayout.of(cfg).questions_teacher
    teacher = None
    if t is not None:
        runtime = ("concurrency", "max_retries", "timeout_seconds", "api_key_env") + (() if t.path else ("batch_size",))
        # the run's own writer is its weights (below), wherever the run folder is (a copied run keeps its replies)
        runtime += ("path",) if cfg.writer.enabled else ()
        teacher = {k: v for k, v in generator_key(t).items() if k not in runtime}
    sampling = [d.retry_temperature if retry else s.temperature, s.top_p, s.max_new_tokens, s.stop, s.seed + (1 if retry else 0)]
    return digest({"stage": "questions-replies", "retry": retry, "teacher": teacher,
                   "weights": model_fingerprint(t.path) if t and t.path else None,
                   "prompt": [d.prompt, d.items_per_chunk, s.system_prompt], "sampling": sampling,
                   "chunk": s.chunk_questions if t and t.path else None})


def documents_fingerprint(cfg: Config) -> list[str | None]:
    """The content of every document file or folder `synth.documents.paths` names."""
    return [file_fingerprint(p) for p in RunLayout.of(cfg).document_paths]


def writer_key(cfg: Config) -> str:
    """The key of the writer stage: its section (not `batch_size`, which only the questions stage reads; its own `seed`,
    not `run.seed`), the prompt it learns to answer (`synth.documents.prompt`, `items_per_chunk`, `synth.system_prompt`), its pairs (the
    file, or `data.arith`'s story settings and the documents its stories must differ from), a checkpoint's weights and
    the tokenizer (its folder, or `tokenizer.min_frequency` for the one a preset writer trains)."""
    w, d, a = cfg.writer, cfg.synth.documents, cfg.data.arith
    stories = [a.max_steps, a.step_weights, a.max_operand, a.max_value, a.operations]  # what `arith.stories` reads
    own_tokenizer = not (w.model.path or w.model.tokenizer)  # a preset's, trained on the pairs
    return digest({"stage": "writer", "own": {k: v for k, v in key_data(w).items() if k != "batch_size"},
                   "prompt": [d.prompt, d.items_per_chunk, cfg.synth.system_prompt],
                   "pairs": file_fingerprint(w.pairs) if w.pairs else [stories, documents_fingerprint(cfg), d.text_field],
                   "weights": model_fingerprint(w.model.path),
                   "tokenizer": cfg.tokenizer.min_frequency if own_tokenizer else model_fingerprint(w.model.tokenizer)})


def questions_shard_key(cfg: Config) -> str:
    """The key of one shard of the questions stage: its replies (first tries and retries) and the chunks."""
    d = cfg.synth.documents
    return digest({"stage": "questions-shard", "replies": [questions_generation_key(cfg), questions_generation_key(cfg, True)],
                   "documents": documents_fingerprint(cfg), "chunks": [d.text_field, d.chunk_tokens, d.chunk_overlap, d.tokenizer,
                                                                      model_fingerprint(d.tokenizer) if d.tokenizer else None, d.max_chunks]})


def questions_key(cfg: Config) -> str:
    """The key of the questions stage: the section, the replies' keys, the documents, the filter's shared settings
    (format limits) and a local judge's weights."""
    s = cfg.synth
    judge = s.judge if "judge" in s.documents.checks else None
    return digest({"stage": "questions", "own": s.documents, "shard": questions_shard_key(cfg),
                   "format": [s.min_steps, s.max_steps, s.max_step_chars],
                   "judge": [generator_key(judge), model_fingerprint(judge.path) if judge.path else None, s.judge_prompt] if judge else None})


def synth_questions_fingerprint(cfg: Config) -> str | None:
    """The content of the questions the synth stage solves (a `datasets` folder without its `:split`)."""
    path = str(RunLayout.of(cfg).synth_questions)
    return file_fingerprint(path.split(":", 1)[0] if cfg.synth.format == "hf_disk" else path)


def synth_shard_key(cfg: Config) -> str:
    """What a shard's candidates must have been written under to be merged: the generation key, the
    questions and how they are read, the samples and chunks. Not the checks: changing one re-filters."""
    s = cfg.synth
    return digest({"stage": "synth-shard", "candidates": synth_generation_key(cfg), "questions": synth_questions_fingerprint(cfg),
                   "read": [s.format, s.fields, s.max_questions], "samples": s.samples, "chunk": s.chunk_questions})


def grpo_key(cfg: Config) -> str:
    """The key of the grpo stage: its config (not `enabled`), its seed, the task that scores rewards, the pipeline
    settings that render its prompts (and, for the TTM, thoughts and the base model's answers), the questions, the
    model it starts from and, for `base_correct`, the base model that reads the thoughts. A dotted-path reward's
    code is not in it."""
    layout = RunLayout.of(cfg)
    g, task = cfg.grpo, cfg.task_of("grpo")
    return digest({"stage": "grpo", "own": {k: v for k, v in key_data(g).items() if k not in ("enabled", "task")},
                   "seed": cfg.run.seed if g.seed is None else None, "task": task.identity(),
                   "pipeline": pipeline_settings(cfg.pipeline, "traces" if g.target == "ttm" else "base"),
                   "data": file_fingerprint(g.train_file or layout.split("train")),
                   "start": model_fingerprint(layout.grpo_start),
                   "base": model_fingerprint(layout.tuned_base) if "base_correct" in g.rewards else None})


def router_traces_key(cfg: Config) -> str:
    """The key of the router's forced traces (the slow part of the router stage): the questions, how
    they are prompted and scored, the pipeline settings that shape a trace, the base model and TTM.
    The router's own training settings are not in it: changing them retrains the MLP on the same traces."""
    layout = RunLayout.of(cfg)
    task = cfg.task_of("router")
    return digest({"stage": "router-traces", "task": task.identity(),
                   "pipeline": pipeline_settings(cfg.pipeline, "traces"), "chunk": router_chunk(cfg),
                   "questions": [cfg.router.train_questions, cfg.router.val_questions],
                   "data": _data_inputs(layout, None, None),
                   "models": [pipeline_model(layout, "base"), pipeline_model(layout, "ttm")]})


def eval_task_key(task: EvalTaskConfig, data: str | os.PathLike[str], max_questions: int | None) -> str:
    """The key of an eval task's questions: its name, options, data and how many are asked."""
    return digest({"name": task.name, "options": task.options, "data": file_fingerprint(data),
                   "max_questions": max_questions, **({"loglikelihood": True} if task.loglikelihood else {})})


def eval_system_key(cfg: Config, system: SystemConfig) -> str:
    """The key of a system's answers: its settings, the pipeline settings it answers with, and the
    content of its models (the generation cache is kept per this key)."""
    settings = _system_settings(system)
    if system.kind == "pipeline":
        scfg = cfg.for_system(system)
        where = RunLayout.of(scfg)
        settings.update(pipeline=pipeline_settings(scfg.pipeline, "eval"), fingerprints={
            "base": pipeline_model(where, "base"), "ttm": pipeline_model(where, "ttm") if system.mode != "never" else None,
            "router": model_fingerprint(where.router) if system.mode in ("router", "depth") else None})
    elif system.generator().path:
        g = system.generator()
        settings.update(fingerprints={"model": model_fingerprint(g.path), "adapter": model_fingerprint(g.adapter),
                                      **({"tokenizer": model_fingerprint(g.tokenizer)} if g.tokenizer else {})})
    return digest(settings)


_GENERATOR_DEFAULTS = {"dtype": "auto", "trust_remote_code": False, "tokenizer": None, "extra_body": {}}
"""What else of a `kind: model` system's `GeneratorConfig` shapes its answers, at the values the older system kinds
(`hf`, `openai`) always had: a key names them only away from these."""


def _system_settings(system: SystemConfig) -> dict[str, Any]:
    """A system's settings for its key, laid out as they were when a system was of kind pipeline (its base model in
    `model`), hf or openai (`model`, `adapter`, `base_url`, `chat` beside the rest), so the generation caches of runs
    evaluated then keep their keys. How requests are sent (concurrency, retries, API key) is not in it."""
    own = {k: v for k, v in key_data(system).items() if k not in ("name", "parameters", "base", "model")}
    if system.kind == "pipeline":
        return {**own, "model": key_data(system.base), "adapter": None, "base_url": None, "chat": True}
    g = system.generator()
    more = {k: v for k, v in key_data(g).items() if k in _GENERATOR_DEFAULTS and v != _GENERATOR_DEFAULTS[k]}
    return {**own, "kind": "hf" if g.path else "openai", "model": g.path or g.model, "adapter": g.adapter,
            "base_url": g.base_url, "chat": g.chat, **({"generator": more} if more else {})}


def data_key(cfg: Config) -> str:
    """The key of the data stage: the data and tokenizer sections and the content of the source files."""
    return digest({"stage": "data", "data": cfg.data, "tokenizer": cfg.tokenizer, "sources": _source_files(cfg)})


def synth_key(cfg: Config) -> str:
    """The key of the synth stage: its section (not how it is sharded, nor who writes: the candidates' key says
    that), its candidates' key, the task that scores them, the questions and a local judge's weights."""
    task = cfg.task_of("synth")
    own = {k: v for k, v in key_data(cfg.synth).items() if k not in ("shard", "teacher", "documents")}
    judge = cfg.synth.judge
    own["judge"] = generator_key(judge)
    return digest({"stage": "synth", "own": own, "candidates": synth_generation_key(cfg),
                   "task": task.identity(), "questions": synth_questions_fingerprint(cfg),
                   "judge": model_fingerprint(judge.path) if judge and judge.path else None})


def distill_key(cfg: Config) -> str:
    """The key of the distillation chain: its own config and its first teacher; each stage's key
    (`distill_stage_key`) adds the stage before it."""
    layout = RunLayout.of(cfg)
    return digest({"stage": "distill", "distill": cfg.distill, "seed": cfg.run.seed,
                   "teacher": model_fingerprint(layout.distill_teacher),
                   "data": [_data_inputs(layout, s.train_file, s.val_file, reasoning=True) for s in cfg.distill.stages],
                   "tokenizer": [_tokenizer_input(s.student, layout) for s in cfg.distill.stages],
                   "weights": [model_fingerprint(s.student.path) for s in cfg.distill.stages]})


def router_key(cfg: Config) -> str:
    """The key of the router stage: its traces' key and its own training settings."""
    # Settings added after routers were first trained count only away from their defaults, so those routers keep
    # their keys (and are not trained again) while a router that uses them gets a key of its own.
    unused = {"task"} | {k for k, default in ROUTER_SETTINGS_ADDED.items() if getattr(cfg.router, k) == default}
    return digest({"stage": "router", "traces": router_traces_key(cfg),
                   "router": {k: v for k, v in key_data(cfg.router).items() if k not in unused}})


ROUTER_SETTINGS_ADDED = {"target_flops_rate": 0.5, "reads": "answer", "labels": "helps", "select": "last"}
"""Router settings newer than the first trained routers, and the default at which they change nothing."""


def eval_key(cfg: Config) -> str:
    """The key of the eval stage: its settings, each task's key and each system's key."""
    layout = RunLayout.of(cfg)
    own = {k: v for k, v in key_data(cfg.eval).items() if k not in ("tasks", "systems", "shard", "out")}
    return digest({"stage": "eval", "eval": own,
                   "tasks": [eval_task_key(t, layout.eval_task_data(t.data), cfg.eval.max_questions) for t in cfg.eval.tasks],
                   "systems": [eval_system_key(cfg, s) for s in cfg.eval.systems]})


ROUTER_CHUNK = 128
"""Questions per chunk of the router's trace collection (at least one pipeline batch)."""


def router_chunk(cfg: Config) -> int:
    """Questions per chunk of router traces: a killed collection loses at most one chunk."""
    return max(ROUTER_CHUNK, cfg.pipeline.batch_size)


def read_key(path: Path) -> str | None:
    """A key written by `write_key` (None when there is none)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def write_key(path: Path, key: str) -> None:
    from pseudocot.files import atomic_write_text

    atomic_write_text(path, key + "\n")
