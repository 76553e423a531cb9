"""`RunLayout`: every path of a run folder, in one place.

    runs/<name>/
      config.yaml  run.log  run_state.json  logs/<stage>.log
      data/        train.jsonl val.jsonl test.jsonl stats.json [rejects.jsonl]
      tokenizer/   the trained tokenizer (tiny models trained from scratch)
      questions/   chunks.jsonl replies.jsonl retry/ kept.jsonl rejects.jsonl train/val/test.jsonl stats.json
      synth/       candidates.jsonl kept.jsonl rejects.jsonl stats.json
      teacher/     the reasoning teacher            } a trained-model folder: the model or adapter,
      distill/     <stage>/ per stage, summary.json } its tokenizer, metrics.json, checkpoints/,
      base/        the base model                   } [merged/], [teacher_cache/], [ttm_thoughts/]
      grpo/        the RL-tuned TTM (or base)
      router/      router.json *.safetensors metrics.json traces/
      eval/        results.json report.md/.csv/.json figures/ predictions/ traces/ cache/

Stages, evaluation, the chat, the router and the benchmarks ask a `RunLayout` for a path; no other
module spells one. Where the config points a reader elsewhere (`pipeline.base/ttm/router`,
`distill.teacher.path`, `eval.out`), the layout's answer follows it.

    layout = RunLayout.of(cfg)
    layout.split("train"), layout.ttm, layout.results
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pseudocot.config.schema import Config, GeneratorConfig
from pseudocot.errors import DataError

# Inside any trained-model folder (a stage's output).
CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
MERGED = "merged"
TEACHER_CACHE = "teacher_cache"
TEACHER_WRITTEN = "written"
STUDENT_INIT = "student-init"
BUILTIN_DATA = "builtin:"
"""An eval task's `data` or a document path with this prefix names a file or folder shipped in `pseudocot/configs/data/`
(small public benchmark subsets, documents)."""
KEY_FILE = "key.txt"
"""Beside what a stage may resume (checkpoints/, router traces/): the stage key it was written under."""
# Inside a router folder (`router.model.Router.save` writes it).
ROUTER_INFO = "router.json"
ROUTER_WEIGHTS = "router.safetensors"
DEPTH_WEIGHTS = "depth.safetensors"
ANSWER_WEIGHTS = "answer.safetensors"


def builtin_path(path: str) -> Path:
    """`builtin:NAME` as the file or folder shipped in `pseudocot/configs/data/NAME`; any other path as it is."""
    if path.startswith(BUILTIN_DATA):
        return Path(__file__).parent / "configs" / "data" / path[len(BUILTIN_DATA):]
    return Path(path)


def safe_name(name: str) -> str:
    """A task or system name as a folder name (`mmlu:college_mathematics` -> `mmlu_college_mathematics`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "x"


def checkpoints_dir(model_dir: Path) -> Path:
    """Where a training stage writes its resumable HF Trainer checkpoints."""
    return Path(model_dir) / CHECKPOINTS


def metrics_file(model_dir: Path) -> Path:
    """A training stage's `metrics.json`, written last: its key marks the folder complete."""
    return Path(model_dir) / METRICS


def merged_dir(model_dir: Path) -> Path:
    """The LoRA adapter merged into its base, when the stage was asked to (`merge: true`)."""
    return Path(model_dir) / MERGED


def student_init_dir(stage_dir: Path) -> Path:
    """A distillation stage's student before training, when it is cut from a model (`student.from`)."""
    return Path(stage_dir) / STUDENT_INIT


def teacher_cache_dir(stage_dir: Path) -> Path:
    """A distillation stage's cached top-k teacher log-probabilities (`distill.mode: cached`)."""
    return Path(stage_dir) / TEACHER_CACHE


def teacher_written_dir(stage_dir: Path) -> Path:
    """A distillation stage's solutions written by its teacher (`teacher_writes`): `candidates.jsonl` (every one, with
    its `key.txt`), `kept.jsonl` (what the student learns from), `rejects.jsonl` and `stats.json`."""
    return Path(stage_dir) / TEACHER_WRITTEN


def teacher_written_file(stage_dir: Path, name: str) -> Path:
    """`candidates.jsonl`, `key.txt`, `kept.jsonl`, `rejects.jsonl` or `stats.json` of `teacher_written_dir`."""
    return teacher_written_dir(stage_dir) / name


def has_model(folder: Path | None) -> bool:
    """A saved model or adapter is in `folder`."""
    return folder is not None and any((Path(folder) / f).is_file() for f in ("config.json", "adapter_config.json"))


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder, as the config `cfg` places and points them."""

    cfg: Config

    @classmethod
    def of(cls, cfg: Config) -> RunLayout:
        return cls(cfg)

    # ---------------------------------------------------------------- the run itself

    @property
    def root(self) -> Path:
        return Path(self.cfg.run.out_dir) / self.cfg.run.name

    @property
    def config_file(self) -> Path:
        """The resolved config every stage of the run reads (`pseudocot run` saves it first)."""
        return self.root / "config.yaml"

    @property
    def run_log(self) -> Path:
        return self.root / "run.log"

    @property
    def state_file(self) -> Path:
        """`run_state.json`: per stage, the key it was started and finished with, and its seconds."""
        return self.root / "run_state.json"

    def stage_log(self, stage: str) -> Path:
        """The log of a stage that runs in its own process."""
        return self.root / "logs" / f"{stage}.log"

    # ---------------------------------------------------------------- data

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        """`data/<train|val|test>.jsonl`."""
        return self.data_dir / f"{name}.jsonl"

    @property
    def data_stats(self) -> Path:
        return self.data_dir / "stats.json"

    @property
    def data_rejects(self) -> Path:
        return self.data_dir / "rejects.jsonl"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def questions_dir(self) -> Path:
        return self.root / "questions"

    def questions_work(self, shard: tuple[int, int] | None = None) -> Path:
        """Where the teacher's replies to document chunks are appended: questions/, or questions/shards/<i>-of-<n>/."""
        return self.questions_dir if shard is None else self.questions_dir / "shards" / f"{shard[0]}-of-{shard[1]}"

    def questions_file(self, name: str, shard: tuple[int, int] | None = None) -> Path:
        """Of the questions stage (`pseudocot synth questions`), or one shard's: `chunks.jsonl` (every chunk and its
        span), `replies.jsonl` + `key.txt` (the teacher's first replies), `retry/replies.jsonl` (its second try at a
        malformed one), `kept.jsonl` (Example JSONL), `rejects.jsonl`, `train.jsonl`/`val.jsonl`/`test.jsonl` (the
        kept questions split by document), `judge.jsonl`, `stats.json`."""
        return self.questions_work(shard) / name

    @property
    def document_paths(self) -> list[str]:
        """`synth.documents.paths`, a `builtin:NAME` one as the folder or file shipped with pseudocot."""
        return [str(builtin_path(p)) for p in self.cfg.synth.documents.paths]

    @property
    def writer_dir(self) -> Path:
        """The question writer trained in the run (`writer.enabled`): model, tokenizer, `metrics.json`, `checkpoints/`."""
        return self.root / "writer"

    @property
    def writer_tokenizer_dir(self) -> Path:
        """A preset writer's tokenizer, trained on its pairs (`key.txt` beside it: the writer key it was trained under)."""
        return self.writer_dir / "tokenizer"

    def writer_pairs(self, split: str) -> Path:
        """`writer/pairs/<train|val>.jsonl`: the pairs the writer learnt from."""
        return self.writer_dir / "pairs" / f"{split}.jsonl"

    @property
    def questions_teacher(self) -> GeneratorConfig | None:
        """Who writes the questions: the run's writer when `writer.enabled`, else `synth.teacher`."""
        w = self.cfg.writer
        if not w.enabled:
            return self.cfg.synth.teacher
        return GeneratorConfig(path=str(self.writer_dir), batch_size=w.batch_size, dtype=w.model.dtype,
                                     trust_remote_code=w.model.trust_remote_code)

    @property
    def synth_dir(self) -> Path:
        return self.root / "synth"

    def synth_work(self, shard: tuple[int, int] | None = None) -> Path:
        """Where generation appends candidates: synth/, or synth/shards/<i>-of-<n>/ for one shard."""
        return self.synth_dir if shard is None else self.synth_dir / "shards" / f"{shard[0]}-of-{shard[1]}"

    def synth_file(self, name: str, shard: tuple[int, int] | None = None) -> Path:
        """`candidates.jsonl`, `kept.jsonl`, `rejects.jsonl`, `stats.json`, `judge.jsonl` (the judge's cache) or
        `key.txt` (the generation key the candidates were written under) of the synth stage or one shard."""
        return self.synth_work(shard) / name

    @property
    def synth_questions(self) -> Path:
        """The questions the synth stage solves: `synth.questions`, else the run's train split."""
        return Path(self.cfg.synth.questions) if self.cfg.synth.questions else self.split("train")

    def reasoning_train(self, train_file: str | None) -> Path:
        """The training data of the teacher and the distillation chain: their `train_file`, else the synth
        stage's kept solutions when `synth.enabled`, else the run's train split."""
        if train_file:
            return Path(train_file)
        return self.synth_file("kept.jsonl") if self.cfg.synth.enabled else self.split("train")

    # ---------------------------------------------------------------- models

    def finetune_dir(self, role: str) -> Path:
        """Where `pseudocot finetune --role <role>` writes: `teacher/` or `base/`."""
        if role not in ("teacher", "base"):
            raise ValueError(f"role must be teacher or base, got {role!r}")
        return self.root / role

    @property
    def teacher_dir(self) -> Path:
        return self.finetune_dir("teacher")

    @property
    def base_dir(self) -> Path:
        return self.finetune_dir("base")

    @property
    def base_ttm_thoughts(self) -> Path:
        """The Tiny Thought Model's thoughts on the base model's training questions (`base.thoughts_from`), kept in a
        subfolder of base/ (not part of the model's fingerprint) with the key they were written under."""
        return self.base_dir / "ttm_thoughts" / "thoughts.jsonl"

    @property
    def distill_dir(self) -> Path:
        return self.root / "distill"

    def distill_stages(self) -> list[tuple[str, Path]]:
        """(name, folder) of every distillation stage, in order; the last one's student is the TTM."""
        return [(name, self.distill_dir / name) for name in self.cfg.distill.stage_names()]

    def ce_only_dir(self) -> Path:
        """The CE-only baseline beside the last stage (`distill.ce_only_baseline`)."""
        return self.distill_dir / f"{self.cfg.distill.stage_names()[-1]}-ce-only"

    @property
    def distill_summary(self) -> Path:
        return self.distill_dir / "summary.json"

    @property
    def distill_teacher(self) -> Path:
        """Stage 1's teacher: `distill.teacher.path`, else the run's fine-tuned teacher."""
        path = self.cfg.distill.teacher.path
        return Path(path) if path else self.teacher_dir

    @property
    def grpo_dir(self) -> Path:
        return self.root / "grpo"

    # ---------------------------------------------------------------- what the pipeline reads

    def _grpo_replaces(self, role: str) -> bool:
        """Whether the GRPO stage's model stands in for `role` (ttm or base) in the pipeline."""
        return self.cfg.grpo.enabled and self.cfg.grpo.target == role

    def engine(self, role: str) -> GeneratorConfig | None:
        """The endpoint that serves the pipeline's `role` (base or ttm) when `pipeline.<role>` names one (`base_url`),
        else None: the pipeline loads the local folder `base` / `ttm` gives."""
        spec = getattr(self.cfg.pipeline, role)
        return spec if isinstance(spec, GeneratorConfig) and spec.base_url else None

    @property
    def tuned_base(self) -> Path:
        """The fine-tuned base model (before any GRPO): `pipeline.base`, else the run's base (its merged/ when written)."""
        if folder := _folder(self.cfg.pipeline.base):
            return folder
        merged = merged_dir(self.base_dir)
        return merged if (merged / "config.json").is_file() else self.base_dir

    @property
    def distilled_ttm(self) -> Path | None:
        """The Tiny Thought Model before any GRPO: `pipeline.ttm`, else the last distillation stage (None without stages)."""
        if folder := _folder(self.cfg.pipeline.ttm):
            return folder
        stages = self.distill_stages()
        return stages[-1][1] if stages else None

    @property
    def grpo_start(self) -> Path | None:
        """The model the GRPO stage starts from (`grpo.target`): the distilled TTM or the fine-tuned base."""
        return self.distilled_ttm if self.cfg.grpo.target == "ttm" else self.tuned_base

    @property
    def base(self) -> Path:
        """The base model the pipeline loads: the GRPO-tuned one (grpo enabled, target base), else `tuned_base`."""
        return self.grpo_dir if self._grpo_replaces("base") else self.tuned_base

    @property
    def ttm(self) -> Path | None:
        """The Tiny Thought Model the pipeline loads: the GRPO-tuned one (grpo enabled, target ttm), else `distilled_ttm`."""
        return self.grpo_dir if self._grpo_replaces("ttm") else self.distilled_ttm

    @property
    def router_dir(self) -> Path:
        """Where the router is written and read: `pipeline.router`, else the run's router/."""
        return Path(self.cfg.pipeline.router) if self.cfg.pipeline.router else self.root / "router"

    @property
    def router_file(self) -> Path:
        return self.router_dir / ROUTER_INFO

    @property
    def router(self) -> Path | None:
        """The trained router's folder, None when there is none yet."""
        return self.router_dir if self.router_file.is_file() else None

    @property
    def router_traces_dir(self) -> Path:
        return self.router_dir / "traces"

    def router_traces_chunk(self, split: str, index: int) -> tuple[Path, Path]:
        """(traces JSONL, router inputs safetensors) of one chunk of the router's forced traces."""
        stem = self.router_traces_dir / f"{split}-{index:04d}"
        return stem.with_suffix(".jsonl"), stem.with_suffix(".safetensors")

    # ---------------------------------------------------------------- evaluation

    @property
    def eval_dir(self) -> Path:
        """`eval.out`, else the run's eval/."""
        return Path(self.cfg.eval.out) if self.cfg.eval.out else self.root / "eval"

    @property
    def eval(self) -> EvalLayout:
        return EvalLayout(self.eval_dir)

    @property
    def results(self) -> Path:
        return self.eval.results

    @property
    def report(self) -> Path:
        return self.eval.report

    def eval_task_data(self, data: str | None) -> Path:
        """An eval task's data: its own `data` (`builtin:NAME`: a file shipped with pseudocot), else the run's test split."""
        return builtin_path(data) if data else self.split("test")

    def inside_run(self, path: Path) -> bool:
        """Whether `path` lies inside the run folder (a folder the config points elsewhere does not)."""
        return path.resolve().is_relative_to(self.root.resolve())


@dataclass(frozen=True)
class EvalLayout:
    """An evaluation folder (a run's eval/, `eval.out`, or `pseudocot eval report --out`):

        results.json  report.md  report.csv  report.json  figures/*.png
        predictions/<task>/<system>.jsonl  traces/<task>/<system>.jsonl
        cache/<task>-<key>/<system>-<key>/seed-<s>/part-*.jsonl  cache/systems/<system>-<key>.json
    """

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def report_file(self, suffix: str) -> Path:
        """`report.md`, `report.csv`, `report.json`."""
        return self.root / f"report{suffix}"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def answers(self, task: str, task_key: str, system: str, system_key: str, seed: int) -> Path:
        """The generation cache of one system on one task with one seed."""
        return self.cache / f"{safe_name(task)}-{task_key}" / f"{safe_name(system)}-{system_key}" / f"seed-{seed}"

    def system_meta(self, system: str, system_key: str) -> Path:
        """What a system was when it was built (its parameter counts)."""
        return self.cache / "systems" / f"{safe_name(system)}-{system_key}.json"

    @staticmethod
    def predictions(task: str, system: str) -> Path:
        """Per-question predictions, relative to the folder (results.json stores it so)."""
        return Path("predictions") / safe_name(task) / f"{safe_name(system)}.jsonl"

    @staticmethod
    def traces(task: str, system: str) -> Path:
        """Pipeline traces, relative to the folder."""
        return Path("traces") / safe_name(task) / f"{safe_name(system)}.jsonl"


def run_config(run_dir: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """A run folder's saved config, pointed at `run_dir` wherever the folder now is."""
    from pseudocot.config.loader import load_config

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise DataError(f"{path}: no run config here; pass a run folder (runs/<name>) made by `pseudocot` stages.")
    where = (f"run.out_dir={run_dir.resolve().parent}", f"run.name={run_dir.name}")
    return load_config(path, (*where, *overrides))


def _folder(spec: str | GeneratorConfig | None) -> Path | None:
    """The local folder a `pipeline.base` / `pipeline.ttm` value names (a path, or a mapping's `path`), else None."""
    if isinstance(spec, GeneratorConfig):
        return Path(spec.path) if spec.path else None
    return Path(spec) if spec else None
