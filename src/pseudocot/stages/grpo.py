"""The `grpo` stage: reinforcement learning of the Tiny Thought Model (or of the base model) with TRL's
`GRPOTrainer` and the rewards of `pseudocot.rewards`, weighted by `grpo.rewards`.

With `target: ttm` each question is prompted as the pipeline prompts the TTM for its first thought,
and one completion is its whole chain of thoughts (one per line): with `base_correct` the base model
then answers with those lines in its context, as the pipeline would show them. With `target: base`
the prompt is the base model's question and the completion its answer. The result, `<run>/grpo/`
(a model folder, or an adapter with `method: lora`), is what the pipeline, the router and evaluation
load in place of the TTM (or base) once `grpo.enabled` is set.

Checkpoints every `grpo.train.save_every_steps`; a killed run resumes from the last one. The stage's
key (`freshness.grpo_key`) covers its config, the seed, the task, the pipeline's prompts, the
questions and the models it starts from and asks. `metrics.json` holds the reward curves: per logged
step every reward's mean, the share of groups without reward spread, and the base model's accuracy
without thoughts (`base_correct`).

    pseudocot grpo --config demo-grpo            -> runs/<name>/grpo/
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pseudocot.config import Config
from pseudocot.errors import ConfigError, ModelError
from pseudocot.freshness import grpo_key
from pseudocot.layout import RunLayout, has_model
from pseudocot.stages import prepare
from pseudocot.tasks.registry import task_from
from pseudocot.train.checkpoints import finished_metrics, train_and_save
from pseudocot.train.setup import shardable, training_fields

CURVE_KEYS = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
              "kl", "entropy", "learning_rate", "base_correct/without_thoughts")
"""What `metrics.json`'s `curve` keeps of each logged step, besides every `rewards/...` entry."""


BATCH_SHAPE = ("generation_batch_size", "steps_per_generation", "remove_unused_columns")
"""TRL fields `grpo.trl` may not set either: they decide which completions form a question's group, and which
dataset columns the rewards see."""


def grpo_arguments(cfg: Config, seed: int) -> Any:
    """TRL's `GRPOConfig` for the stage: `grpo.train` as for every stage, the TRL-named keys, then `grpo.trl`.
    A `grpo.trl` key that is not a GRPOConfig field, or that pseudocot sets itself, stops here in one line, and so
    does a combination TRL refuses; no model has loaded yet."""
    from trl import GRPOConfig

    g = cfg.grpo
    out = RunLayout.of(cfg).grpo_dir
    fields = training_fields(dataclasses.replace(g.train, lr=g.learning_rate), out, seed, cfg.run.device, has_eval=False)
    fields |= dict(gradient_checkpointing=g.train.gradient_checkpointing, num_generations=g.num_generations,
                   max_completion_length=g.max_completion_length, temperature=g.temperature, beta=g.beta,
                   loss_type=g.loss_type, scale_rewards=g.scale_rewards, mask_truncated_completions=g.mask_truncated_completions,
                   reward_weights=[float(w) for w in g.rewards.values()], include_num_input_tokens_seen="no")
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = sorted(set(g.trl) - known)
    if unknown:
        raise ConfigError(f"grpo.trl has '{unknown[0]}', which is not a field of trl.GRPOConfig; see its documentation for the names.")
    taken = sorted(set(g.trl) & (set(fields) | set(BATCH_SHAPE)))
    if taken:
        raise ConfigError(f"grpo.trl sets '{taken[0]}', which pseudocot sets from grpo's own keys or grpo.train; set it there.")
    try:
        return GRPOConfig(**fields, **g.trl)
    except ValueError as e:  # TRL's own checks (e.g. several processes whose batch no longer divides into groups)
        raise ConfigError(f"grpo: TRL refuses these settings: {e}") from None


def check_settings(cfg: Config, seed: int | None = None) -> Any:
    """What can be checked before any stage trains (`pseudocot run` calls it first): the TRL settings, the rewards'
    names and the task's extraction. Returns TRL's arguments (under `seed`, default `run.seed`)."""
    from pseudocot.rewards import get_reward
    from pseudocot.synth.filter import FilterSettings

    g = cfg.grpo
    args = grpo_arguments(cfg, cfg.run.seed if seed is None else seed)
    for name in g.rewards:
        get_reward(name)  # a dotted path that does not import
    t = cfg.task_of("grpo")
    if t.loglikelihood and "base_correct" in g.rewards:
        raise ConfigError(f"grpo task '{t.name}' is scored by option log-likelihood, but base_correct scores the base model's "
                          "generated answer; set grpo.task to the same task without loglikelihood.")
    FilterSettings(task_from(t), g.extraction)  # an extraction the task does not have
    return args


def plain_prompts(tokenizer: Any, texts: list[str]) -> list[str]:
    """`texts` as TRL must get them to tokenize them as the pipeline does: TRL tokenizes a text prompt with the
    tokenizer's special tokens, the pipeline without, so a BOS the chat template already wrote is dropped.
    A tokenizer whose prompts still tokenize differently (checked on the first; they share one template) stops here."""
    bos = getattr(tokenizer, "bos_token", None)
    adds = tokenizer("x")["input_ids"] != tokenizer("x", add_special_tokens=False)["input_ids"]
    plain = [t[len(bos):] if adds and bos and t.startswith(bos) else t for t in texts]
    if plain and tokenizer(plain[0])["input_ids"] != tokenizer(texts[0], add_special_tokens=False)["input_ids"]:
        raise ConfigError(f"tokenizer '{getattr(tokenizer, 'name_or_path', '')}' adds special tokens to a prompt that the pipeline "
                          "does not give the model, so GRPO would train on other prompts than the pipeline's; use a tokenizer "
                          "that adds none, or a chat template that writes them itself.")
    return plain


def dataset(cfg: Config, tokenizer: Any, task: Any) -> Any:
    """The questions as TRL rows: `prompt` (as the pipeline renders it for the model that learns), and the
    columns the rewards read (`question`, `answer`, `choices`)."""
    from datasets import Dataset

    from pseudocot.data.chat import base_messages, render, ttm_prompt
    from pseudocot.train.rows import read_split

    layout = RunLayout.of(cfg)
    path = Path(cfg.grpo.train_file or layout.split("train"))
    examples = read_split(path, "GRPO questions", cfg.grpo.max_questions)
    if not examples:
        raise ConfigError(f"{path} holds no questions for GRPO; point grpo.train_file at an Example JSONL with gold answers.")
    questions = task.prompts(examples)  # as evaluation and the router ask them
    p = cfg.pipeline
    if cfg.grpo.target == "ttm":
        prompts = [ttm_prompt(tokenizer, q, [], "", p) for q in questions]
    else:
        prompts = [render(tokenizer, base_messages(q, [], p), add_generation_prompt=True) for q in questions]
    return Dataset.from_list([{"prompt": pr, "question": q, "answer": e.answer, "choices": e.choices}
                              for pr, q, e in zip(plain_prompts(tokenizer, prompts), questions, examples)])


def curve(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged steps of a GRPO run: rewards, zero-spread shares, length, KL, learning rate."""
    out = []
    for entry in log_history:
        if "reward" not in entry:
            continue
        kept = {k: v for k, v in entry.items() if k.startswith("rewards/") or k in CURVE_KEYS}
        out.append({"step": entry.get("step"), **kept})
    return out


def main(cfg: Config) -> dict[str, Any]:
    """Train `<run>/grpo/` from the distilled TTM (or the fine-tuned base); returns its metrics."""
    from trl import GRPOTrainer

    from pseudocot.models.loading import load_tokenizer
    from pseudocot.models.lora import attach_lora, is_adapter, load_trained
    from pseudocot.rewards import RewardContext, build_rewards

    prepare(cfg)
    layout = RunLayout.of(cfg)
    g = cfg.grpo
    out = layout.grpo_dir
    start = layout.grpo_start
    if not has_model(start):
        what = "TTM (run `pseudocot distill`)" if g.target == "ttm" else "base model (run `pseudocot finetune`)"
        raise ModelError(f"{start}: no {what} to start GRPO from; train it first or set pipeline.{g.target}.")
    if g.method == "lora" and is_adapter(start):
        raise ModelError(f"{start} is a LoRA adapter; GRPO with method lora needs a full model to put its adapter on: "
                         "merge it (merge: true) or use grpo.method full.")
    key = grpo_key(cfg)
    done = finished_metrics(out, key)
    if done is not None:
        return done
    seed = g.seed if g.seed is not None else cfg.run.seed
    args = check_settings(cfg, seed)  # before any model loads
    t = cfg.task_of("grpo")
    task = task_from(t)
    tokenizer = load_tokenizer(str(start))
    rows = dataset(cfg, tokenizer, task)

    base = base_tokenizer = None
    if "base_correct" in g.rewards:
        from pseudocot.generate.hf import HFGenerator

        if not has_model(layout.tuned_base):
            raise ModelError(f"{layout.tuned_base}: no base model for the base_correct reward; run `pseudocot finetune` first.")
        base_model = load_trained(layout.tuned_base, device=cfg.run.device)
        base_model.eval()
        base_tokenizer = load_tokenizer(str(layout.tuned_base))
        base = HFGenerator(base_model, base_tokenizer, batch_size=cfg.pipeline.batch_size, kv_reuse=True)
    ctx = RewardContext(task=task, extraction=g.extraction, pipeline=cfg.pipeline, base=base, base_tokenizer=base_tokenizer,
                        length_budget_tokens=g.length_budget_tokens, length_penalty_per_token=g.length_penalty_per_token,
                        max_completion_length=g.max_completion_length, num_generations=g.num_generations)
    funcs = build_rewards(g.rewards, ctx)

    model = load_trained(start, device=cfg.run.device)
    if g.method == "lora":
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = attach_lora(model, g.lora, gradient_checkpointing=g.train.gradient_checkpointing)
    model.train()
    trainer = shardable(GRPOTrainer)(model=model, reward_funcs=funcs, args=args, train_dataset=rows, processing_class=tokenizer)
    metrics = {"target": g.target, "start": str(start), "method": g.method, "rewards": dict(g.rewards),
               "questions": len(rows), "num_generations": g.num_generations,
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}

    return train_and_save(trainer, out, key, tokenizer, [], g.train.batch_size, metrics,
                          after=lambda: {"curve": curve(trainer.state.log_history)})
