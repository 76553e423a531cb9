"""GPU check: training speed, distillation memory, KV-reuse generation speed and an inference engine at real model shapes.

Owns the one prepared measurement that needs a CUDA GPU, run in one go (budgeted to under 9 minutes
on one H100/H200) on random-init Llama-3 shapes, offline, with nothing that imports TRL:

    python benchmarks/gpu_check.py --device cuda --out gpu_check.json
    python benchmarks/gpu_check.py --device cpu --toy          # every shape scaled down, fp32, seconds

1. `lora_sft`: LoRA SFT of a Llama-3.2-1B-shaped model (`models.lora.attach_lora`, r=32, alpha=64,
   the config's default targets and dropout). Frozen weights in bf16, LoRA adapters in fp32 (PEFT
   upcasts them), no autocast; a plain loop of AdamW on the adapters and the model's own CE loss.
   Tokens/s over the timed steps; MFU = tokens/s * model FLOPs per token / the GPU's peak dense bf16
   FLOPs, with model FLOPs per token = 4 N_frozen + 6 N_lora + 12 L T d_attn: a frozen matmul weight
   costs a forward and an input-gradient matmul (2 + 2 FLOPs per weight), a trained one also its
   weight gradient (+ 2), and attention QK^T and AV cost 4 T d_attn per layer forward, twice that
   backward (PaLM's convention: causal masking not discounted). N counts matmul weights (every
   nn.Linear, the tied head once, not the input embedding). `mfu_6n_convention` is 6 N_total
   tokens/s / peak, the figure full fine-tuning reports, for comparison.
2. `distill_step`: one step of an 8B-shaped teacher (bf16, no grad) into a trainable 1B-shaped student
   (bf16 weights, every parameter gets a gradient; no optimizer step, which would be the same for
   both forms) at V = 128,256, loss = forward KL(teacher || student) at temperature 1 on every
   next-token position, computed (a) `chunked`: `losses.chunked_distill_loss` on both decoders' final
   hidden states and heads (no full-vocabulary logits exist) and (b) `plain`: both models' full
   logits, then `losses.distill_loss`. For each: step seconds, peak memory from
   `torch.cuda.reset_peak_memory_stats()` (weights included, and above them), the loss and the
   student's gradient norm; the two forms must agree to 1e-2 relative in bf16 (1e-4 in fp32).
3. `pipeline_kv_reuse`: the base model (1B- and 8B-shaped) answers a batch of arith questions after
   0, 1, 2 and 3 fixed thoughts (the questions' own gold solution lines), prompts rendered by
   `pipeline.Pipeline.base_prompt`, generation by `generate.hf.HFGenerator`, as `benchmarks/pipeline.py`
   measures `kv_reuse_speedup`: `reuse` (sessions, only new tokens encoded), `no_reuse` (the same
   decoding loop re-encoding the whole context) and `hf_generate` (HF `generate`). Greedy, no stop
   strings, so every answer runs to `answer_max_new_tokens` unless the model emits its end token; the
   counts are taken from the completions. The tokenizer is a BPE trained here on arith text, padded
   with plain added tokens to the model's vocabulary (128,256), so the head costs what a real one
   does and every id the model emits decodes to its own text: `same_text_fraction` compares the
   answers of each mode with `reuse`'s (equal in fp32; bf16 rounding may flip a near-tied argmax).
   The head is untied here (same cost): a random tied model only repeats its last input token.

4. `pipeline_engine`: the 1B-shaped base model's answers of part 3 through an inference engine, as the pipeline sends
   them with `pipeline.base: {base_url, model, tokenizer}` (prompts rendered with the tokenizer, text to
   /v1/completions, a batch's requests in flight together): vLLM's OpenAI server (prefix caching on) when vLLM is
   installed, else `pseudocot models serve`'s engine (the CPU toy). Re-answer seconds against the local sessions on
   the same weights, the engine's cached prompt tokens, `same_text_fraction` (1.0 for the pseudocot engine in fp32).

Each part runs in its own time budget, 540 s in all on the GPU (checked between steps: it stops early
and says so), and a part that fails (an OOM) records its error and the next part runs. The last line
printed is one JSON object; `--out` writes it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# LlamaConfig size fields. Real: Llama-3.2-1B and Llama-3.1-8B (default RoPE at theta 500k: the
# llama3 frequency scaling changes no cost). Toy: the same structure (tied 1B, untied 8B, GQA) tiny.
SHAPES: dict[str, dict[str, Any]] = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, vocab_size=128_256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=128_256, tie_word_embeddings=False),
}
TOY_SHAPES: dict[str, dict[str, Any]] = {
    "1b": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True),
    "8b": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, vocab_size=512, tie_word_embeddings=False),
}
# Peak dense (no sparsity) bf16 tensor FLOP/s by a substring of `torch.cuda.get_device_name()`; first match wins.
PEAK_BF16_FLOPS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("A100", 312e12))


@dataclass
class Plan:
    """Sizes and budgets of one check; `Plan()` is the GPU run, `Plan.toy()` the CPU one."""

    shapes: dict[str, dict[str, Any]] = field(default_factory=lambda: SHAPES)
    sft_batch: int = 8
    sft_seq_tokens: int = 1024
    sft_warmup_steps: int = 3
    sft_timed_steps: int = 10
    distill_batch: int = 2
    distill_seq_tokens: int = 1024
    distill_timed_steps: int = 3
    chunk_tokens: int | None = None
    """Chunk of the chunked loss (None: the library default, 256 tokens at V = 128,256)."""
    questions: int = 32
    thoughts: int = 3
    answer_max_new_tokens: int = 48
    pipeline_shapes: tuple[str, ...] = ("1b", "8b")
    budget_seconds: dict[str, float] = field(default_factory=lambda: {"lora_sft": 90.0, "distill_step": 120.0,
                                                                       "pipeline_kv_reuse": 180.0, "pipeline_engine": 150.0})

    @classmethod
    def toy(cls) -> Plan:
        # Chunks of 32 tokens so the chunked loss really walks several chunks (126 positions).
        return cls(shapes=TOY_SHAPES, sft_batch=2, sft_seq_tokens=64, sft_warmup_steps=1, sft_timed_steps=3,
                   distill_batch=2, distill_seq_tokens=64, distill_timed_steps=2, chunk_tokens=32, questions=4,
                   answer_max_new_tokens=8,
                   budget_seconds={"lora_sft": 30.0, "distill_step": 30.0, "pipeline_kv_reuse": 60.0, "pipeline_engine": 60.0})


@dataclass
class Deadline:
    """A part's time budget, checked between steps: a part that runs long stops early and says so."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def expired(self) -> bool:
        return time.perf_counter() - self.start > self.seconds


# ------------------------------------------------------------------------------------------------
# Helpers: models, devices, memory.
# ------------------------------------------------------------------------------------------------


def build_model(shape: dict[str, Any], dtype: torch.dtype, device: torch.device, seed: int, tokenizer: Any = None) -> Any:
    """A random-init LlamaForCausalLM of `shape`, made directly on `device` in `dtype` (an 8B never
    passes through fp32 or the CPU); special ids from `tokenizer` when given."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    ids = {} if tokenizer is None else dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                              pad_token_id=tokenizer.pad_token_id)
    config = LlamaConfig(**shape, **ids, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 500_000.0})
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if tokenizer is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 3)


def reset_peak(device: torch.device) -> int:
    """Free what can be freed, restart the peak counter, and return the bytes still allocated (0 on CPU)."""
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated GiB since `reset_peak` (None on CPU: torch keeps no such counter there)."""
    return gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def matmul_params(model: Any, trainable: bool) -> int:
    """Weights of every nn.Linear (the tied head once; the input embedding is a lookup, no FLOPs)."""
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m.weight.requires_grad == trainable)


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


# ------------------------------------------------------------------------------------------------
# 1. LoRA SFT on the 1B shape.
# ------------------------------------------------------------------------------------------------


def lora_sft(plan: Plan, device: torch.device, dtype: torch.dtype, peak: float | None, deadline: Deadline) -> dict[str, Any]:
    from pseudocot.config.schema import LoraConfig
    from pseudocot.models.lora import attach_lora

    shape = plan.shapes["1b"]
    lora = LoraConfig(r=32, alpha=64)
    model = attach_lora(build_model(shape, dtype, device, seed=0), lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_lora, n_frozen = sum(p.numel() for p in trainable), matmul_params(model, trainable=False)
    n_total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    B, T = plan.sft_batch, plan.sft_seq_tokens
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(shape["vocab_size"], (B, T), generator=gen).to(device)  # (B, T): speed does not depend on the tokens

    def step() -> float:
        loss = model(input_ids=ids, labels=ids).loss  # the model's own shifted CE, logits upcast to fp32 inside
        loss.backward()
        loss = loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(plan.sft_warmup_steps):  # kernels picked, optimizer state allocated: not timed
        step()
    # Peak from here on: weights + AdamW state + one step's activations and gradients.
    reset_peak(device)
    sync(device)
    t0, steps, loss = time.perf_counter(), 0, float("nan")
    while steps < plan.sft_timed_steps and not (steps and deadline.expired()):
        loss = step()
        steps += 1
    sync(device)
    seconds = time.perf_counter() - t0
    tokens_per_second = B * T * steps / seconds
    attn_dim = shape["num_attention_heads"] * shape["head_dim"]
    flops_per_token = 4 * n_frozen + 6 * n_lora + 12 * shape["num_hidden_layers"] * T * attn_dim
    return {
        "shape": "1b", "batch": B, "seq_tokens": T, "warmup_steps": plan.sft_warmup_steps, "timed_steps": steps,
        "stopped_early": steps < plan.sft_timed_steps,
        "precision": f"frozen weights {dtype}, LoRA adapters {trainable[0].dtype}, no autocast",
        "lora": dataclasses.asdict(lora), "trainable_params": n_lora, "frozen_matmul_params": n_frozen, "total_params": n_total,
        "step_seconds": round(seconds / steps, 5), "tokens_per_second": round(tokens_per_second, 1),
        "flops_formula": "4 * frozen_matmul_params + 6 * trainable_params + 12 * layers * seq_tokens * heads * head_dim",
        "model_flops_per_token": flops_per_token,
        "model_tflops_per_second": round(tokens_per_second * flops_per_token / 1e12, 6),
        "mfu": None if peak is None else round(tokens_per_second * flops_per_token / peak, 4),
        "mfu_6n_convention": None if peak is None else round(tokens_per_second * 6 * n_total / peak, 4),
        "peak_memory_gib": peak_gib(device), "loss": round(loss, 5),
    }


# ------------------------------------------------------------------------------------------------
# 2. One distillation step, 8B teacher -> 1B student: chunked vs plain loss.
# ------------------------------------------------------------------------------------------------


def distill_step(plan: Plan, device: torch.device, dtype: torch.dtype, deadline: Deadline) -> dict[str, Any]:
    from pseudocot.losses import chunked_distill_loss, distill_loss
    from pseudocot.models.heads import decoder_hidden, logit_head

    teacher = build_model(plan.shapes["8b"], dtype, device, seed=1).eval().requires_grad_(False)
    student = build_model(plan.shapes["1b"], dtype, device, seed=2).train()
    B, T = plan.distill_batch, plan.distill_seq_tokens
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(plan.shapes["1b"]["vocab_size"], (B, T), generator=gen).to(device)  # (B, T)
    mask = torch.ones_like(ids)
    labels = ids[:, 1:]  # (B, T-1): position t predicts token t+1
    weights = dict(ce_weight=0.0, fkl_weight=1.0, rkl_weight=0.0, temperature=1.0)
    H, Ht = plan.shapes["1b"]["hidden_size"], plan.shapes["8b"]["hidden_size"]

    def chunked() -> torch.Tensor:
        with torch.no_grad():
            t_hidden = decoder_hidden(teacher, ids, mask)  # (B, T, Ht)
        s_hidden = decoder_hidden(student, ids, mask)  # (B, T, H): no (B, T, V) logits from either model
        return chunked_distill_loss(
            s_hidden[:, :-1].reshape(-1, H), logit_head(student).weight, labels.reshape(-1),
            teacher_hidden=t_hidden[:, :-1].reshape(-1, Ht), teacher_lm_head_weight=logit_head(teacher).weight,
            chunk_size=plan.chunk_tokens, **weights)

    def plain() -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        s_logits = student(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        return distill_loss(s_logits[:, :-1], t_logits[:, :-1], labels, **weights)

    out: dict[str, Any] = {
        "teacher_shape": "8b", "student_shape": "1b", "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()), "batch": B, "seq_tokens": T,
        "vocab_size": plan.shapes["1b"]["vocab_size"], "dtype": str(dtype), "chunk_tokens": plan.chunk_tokens,
        "objective": "forward KL(teacher || student), temperature 1, every next-token position, mean over tokens",
        "step": "teacher forward (no grad) + student forward + loss + backward into every student weight",
    }
    for name, loss_fn in (("chunked", chunked), ("plain", plain)):
        if deadline.expired():
            out[name] = {"skipped": "time budget spent"}
            continue
        loss_fn().backward()  # warm-up: kernels picked, not timed
        student.zero_grad(set_to_none=True)
        weights_bytes = reset_peak(device)
        times: list[float] = []
        for i in range(plan.distill_timed_steps):
            sync(device)
            t0 = time.perf_counter()
            value = loss_fn()
            value.backward()
            sync(device)
            times.append(time.perf_counter() - t0)
            last = i + 1 == plan.distill_timed_steps or deadline.expired()
            if last:
                peak = peak_gib(device)  # before the norm's own fp32 temporaries
                loss = value.detach().item()
                # Same weights every step (no optimizer): the gradient must match between the forms too.
                grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in student.parameters()])).item()
            student.zero_grad(set_to_none=True)
            if last:
                break
        out[name] = {"step_seconds": round(sum(times) / len(times), 5), "timed_steps": len(times),
                     "peak_memory_gib": peak, "weights_gib": gib(weights_bytes) if device.type == "cuda" else None,
                     "peak_above_weights_gib": None if peak is None else round(peak - gib(weights_bytes), 3),
                     "loss": loss, "grad_norm": grad_norm}
    if "loss" in out.get("chunked", {}) and "loss" in out.get("plain", {}):
        c, p = out["chunked"], out["plain"]
        tolerance = 1e-4 if dtype == torch.float32 else 1e-2
        out.update(tolerance=tolerance, loss_rel_diff=rel_diff(c["loss"], p["loss"]),
                   grad_norm_rel_diff=rel_diff(c["grad_norm"], p["grad_norm"]),
                   chunked_speedup=round(p["step_seconds"] / c["step_seconds"], 3))
        out["losses_agree"] = out["loss_rel_diff"] < tolerance and out["grad_norm_rel_diff"] < tolerance
        if c["peak_memory_gib"] is not None:
            out["memory_saved_gib"] = round(p["peak_memory_gib"] - c["peak_memory_gib"], 3)
    return out


# ------------------------------------------------------------------------------------------------
# 3. The base model's re-answers with and without KV reuse.
# ------------------------------------------------------------------------------------------------


def padded_tokenizer(texts: list[str], vocab_size: int) -> tuple[Any, int]:
    """A BPE tokenizer trained on `texts`, padded with plain added tokens `<vN>` to exactly `vocab_size`
    ids; returns it and the number of trained (non-padding) ids."""
    from pseudocot.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=min(vocab_size, 512))
    trained = len(tokenizer)
    tokenizer.add_tokens([f"<v{i}>" for i in range(vocab_size - trained)])
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"the padded tokenizer has {len(tokenizer)} ids, the model {vocab_size}.")
    return tokenizer, trained


def arith_rounds(plan: Plan) -> tuple[list[Any], Any, int, list[list[str]], Any, Any]:
    """What parts 3 and 4 answer: (problems, the padded tokenizer, its trained ids, each problem's k fixed thoughts,
    the pipeline config, the generation params). k + 1 steps per problem, so every question has k gold lines to serve
    as its thoughts."""
    from pseudocot.config import ArithConfig, PipelineConfig
    from pseudocot.data import arith
    from pseudocot.generate.base import GenerationParams

    k = plan.thoughts
    problems = arith.generate(plan.questions, ArithConfig(max_steps=k + 1, step_weights=[0.0] * k + [1.0]), seed=7)
    corpus = arith.generate(400, ArithConfig(), seed=8)
    tokenizer, trained = padded_tokenizer([e.question + "\n" + e.reasoning for e in corpus], plan.shapes["1b"]["vocab_size"])
    cfg = PipelineConfig(mode="never", answer_max_new_tokens=plan.answer_max_new_tokens, answer_stop=[],
                         batch_size=plan.questions)
    thoughts = [e.reasoning.splitlines()[:k] for e in problems]
    return problems, tokenizer, trained, thoughts, cfg, GenerationParams(max_new_tokens=plan.answer_max_new_tokens)


def pipeline_kv_reuse(plan: Plan, device: torch.device, dtype: torch.dtype, deadline: Deadline) -> dict[str, Any]:
    from pseudocot.generate.base import GenerationParams
    from pseudocot.generate.hf import HFGenerator
    from pseudocot.pipeline import Pipeline

    k = plan.thoughts
    problems, tokenizer, trained, thoughts, cfg, params = arith_rounds(plan)
    vocab = plan.shapes["1b"]["vocab_size"]
    out: dict[str, Any] = {
        "questions": len(problems), "thoughts": k, "answer_max_new_tokens": plan.answer_max_new_tokens,
        "tokenizer": {"trained_ids": trained, "padded_to": vocab,
                      "note": "BPE trained on arith text, padded with plain added tokens to the model vocabulary"},
    }
    for shape_name in plan.pipeline_shapes:
        if deadline.expired():
            out[shape_name] = {"skipped": "time budget spent"}
            continue
        # Untied head, a separate random (V, H) matrix, the same cost: a random tied model's logits peak at
        # the last input token's own row, so it repeats that token and every answer would be alike.
        untied = dict(plan.shapes[shape_name], tie_word_embeddings=False)
        model = build_model(untied, dtype, device, seed=3, tokenizer=tokenizer).eval()
        gens = {"reuse": HFGenerator(model, tokenizer, batch_size=plan.questions, kv_reuse=True),
                "no_reuse": HFGenerator(model, tokenizer, batch_size=plan.questions, kv_reuse=False)}
        gens["hf_generate"] = gens["no_reuse"]
        # One definition of the base model's prompt: the pipeline's own, after 0..k thoughts.
        pipe = Pipeline(gens["reuse"], None, cfg)
        rounds = [[pipe.base_prompt(e.question, th[:i]) for e, th in zip(problems, thoughts)] for i in range(k + 1)]
        gens["reuse"].generate(rounds[0][:2], GenerationParams(max_new_tokens=2))  # warm-up, not timed
        context_tokens = [len(ids) for ids in tokenizer(rounds[-1], add_special_tokens=False)["input_ids"]]
        res: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "tied_head": False,
                               "mean_context_tokens": round(sum(context_tokens) / len(context_tokens), 1)}
        texts: dict[str, list[str]] = {}
        for mode in ("reuse", "no_reuse", "hf_generate"):
            if deadline.expired():
                res[mode] = {"skipped": "time budget spent"}
                continue
            gen, keys = gens[mode], [("gpu_check", mode, i) for i in range(len(problems))]
            seconds, completions = [], []
            for prompts in rounds:
                sync(device)
                t0 = time.perf_counter()
                completions.append(gen.generate(prompts, params, sessions=None if mode == "hf_generate" else keys))
                sync(device)
                seconds.append(time.perf_counter() - t0)
            gen.end_sessions(keys)
            later = [c for cs in completions[1:] for c in cs]  # the re-answers, after 1..k thoughts
            generated = sum(c.completion_tokens for c in later)
            texts[mode] = [c.text for cs in completions for c in cs]
            res[mode] = {"reanswer_seconds": round(sum(seconds[1:]), 4), "first_answer_seconds": round(seconds[0], 4),
                         "reanswer_generated_tokens": generated,
                         "reanswer_tokens_per_second": round(generated / sum(seconds[1:]), 1),
                         "reanswer_encoded_prompt_tokens": sum(c.prompt_tokens - c.cached_tokens for c in later),
                         "reanswer_cached_prompt_tokens": sum(c.cached_tokens for c in later)}
        if "reanswer_seconds" in res.get("reuse", {}):
            for mode in ("no_reuse", "hf_generate"):
                if mode in texts:
                    res[f"kv_reuse_speedup_vs_{mode}"] = round(res[mode]["reanswer_seconds"] / res["reuse"]["reanswer_seconds"], 3)
                    same = sum(a == b for a, b in zip(texts[mode], texts["reuse"]))
                    res.setdefault("same_text_fraction", {})[mode] = round(same / len(texts["reuse"]), 4)
            # Equal texts only show equal tokens if the answers say something (special ids decode to "").
            res["nonempty_answer_fraction"] = round(sum(bool(t) for t in texts["reuse"]) / len(texts["reuse"]), 4)
        out[shape_name] = res
        del model, gens, pipe
        reset_peak(device)
    return out


def _start_engine(folder: Path, device: torch.device, dtype: torch.dtype, deadline: Deadline) -> tuple[str, str, Any]:
    """(which, base_url, stop): vLLM's OpenAI server on the GPU when vLLM is installed (prefix caching on, the cached
    tokens in the usage), else `pseudocot models serve`'s engine in a thread of this process."""
    import importlib.util
    import socket
    import subprocess

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if device.type == "cuda" and importlib.util.find_spec("vllm") is not None:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name",
               "engine", "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16" if dtype == torch.bfloat16 else "float32",
               "--enable-prefix-caching", "--enable-prompt-tokens-details", "--gpu-memory-utilization", "0.35",
               "--max-model-len", "4096"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        while not deadline.expired():
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return "vllm", f"http://127.0.0.1:{port}/v1", proc.terminate
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM's server exited ({proc.returncode}) before it was ready")
            time.sleep(1)
        proc.terminate()
        raise RuntimeError("vLLM's server was not ready within the part's budget")
    import threading

    import uvicorn

    from pseudocot.config import GeneratorConfig
    from pseudocot.generate import open_generator
    from pseudocot.serve.engine import Engine, create_engine_app

    engine = Engine(open_generator(GeneratorConfig(path=str(folder), dtype="bfloat16" if dtype == torch.bfloat16 else "float32"),
                                   device=device.type))
    server = uvicorn.Server(uvicorn.Config(create_engine_app(engine, "engine", None), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if deadline.expired() or not thread.is_alive():
            raise RuntimeError("the pseudocot engine did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)

    return "pseudocot", f"http://127.0.0.1:{port}/v1", stop


def pipeline_engine(plan: Plan, device: torch.device, dtype: torch.dtype, deadline: Deadline) -> dict[str, Any]:
    """The base model's re-answers of `pipeline_kv_reuse` (1B shape) through an inference engine, as the pipeline sends
    them (`pipeline.base: {base_url, model, tokenizer}`): prompts rendered here, text to /v1/completions, every
    question's request in flight at once; against the local `HFGenerator` with sessions on the same weights."""
    import tempfile

    from pseudocot.config import GeneratorConfig
    from pseudocot.generate import open_generator
    from pseudocot.generate.hf import HFGenerator
    from pseudocot.pipeline import Pipeline

    k = plan.thoughts
    problems, tokenizer, _, thoughts, cfg, params = arith_rounds(plan)
    model = build_model(dict(plan.shapes["1b"], tie_word_embeddings=False), dtype, device, seed=3, tokenizer=tokenizer).eval()
    local = HFGenerator(model, tokenizer, batch_size=plan.questions, kv_reuse=True)
    pipe = Pipeline(local, None, cfg)
    rounds = [[pipe.base_prompt(e.question, th[:i]) for e, th in zip(problems, thoughts)] for i in range(k + 1)]
    out: dict[str, Any] = {"questions": len(problems), "thoughts": k}
    with tempfile.TemporaryDirectory(prefix="gpu-check-engine-") as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        which, url, stop = _start_engine(folder, device, dtype, deadline)
        out["server"] = which
        try:
            remote = open_generator(GeneratorConfig(base_url=url, model="engine", tokenizer=str(folder),
                                                    concurrency=plan.questions, extra_body={}), chat=False)
            texts: dict[str, list[str]] = {}
            for name, gen in (("local", local), ("engine", remote)):
                keys = [("gpu_check_engine", i) for i in range(len(problems))]
                seconds, completions = [], []
                for prompts in rounds:
                    sync(device)
                    t0 = time.perf_counter()
                    completions.append(gen.generate(prompts, params, sessions=keys) if gen is local else gen.generate(prompts, params))
                    sync(device)
                    seconds.append(time.perf_counter() - t0)
                later = [c for cs in completions[1:] for c in cs]
                texts[name] = [c.text for cs in completions for c in cs]
                out[name] = {"reanswer_seconds": round(sum(seconds[1:]), 4),
                             "reanswer_generated_tokens": sum(c.completion_tokens for c in later),
                             "reanswer_prompt_tokens": sum(c.prompt_tokens for c in later),
                             "reanswer_cached_prompt_tokens": sum(c.cached_tokens for c in later)}
            remote.close()
        finally:
            stop()
    out["engine_speedup_vs_local"] = round(out["local"]["reanswer_seconds"] / out["engine"]["reanswer_seconds"], 3)
    out["same_text_fraction"] = round(sum(a == b for a, b in zip(texts["engine"], texts["local"])) / len(texts["local"]), 4)
    return out


# ------------------------------------------------------------------------------------------------
# The run.
# ------------------------------------------------------------------------------------------------


def run_part(name: str, fn: Any, budget_seconds: float, device: torch.device, **kwargs: Any) -> dict[str, Any]:
    """One part in its budget; a failure (an OOM, a shape the library rejects) becomes its result."""
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    deadline = Deadline(budget_seconds)
    try:
        out = fn(device=device, deadline=deadline, **kwargs)
    except Exception as e:  # noqa: BLE001 -- the next part must still run
        out = {"error": f"{type(e).__name__}: {e}"[:2000]}
    # The failed part's tensors died with its frames; hand their memory back before the next part.
    reset_peak(device)
    out.update(seconds=round(time.perf_counter() - deadline.start, 2), budget_seconds=budget_seconds)
    print(f"gpu_check: {name} done in {out['seconds']} s", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--toy", action="store_true", help="every shape scaled down (hidden 64/128, 2 layers, vocab 512)")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of a GPU not in the table")
    ap.add_argument("--parts", default="lora_sft,distill_step,pipeline_kv_reuse,pipeline_engine", help="comma-separated parts to run")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    plan_flags = ("sft_batch", "sft_seq_tokens", "distill_batch", "distill_seq_tokens", "questions", "answer_max_new_tokens")
    for name in plan_flags:
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"override the plan's {name}")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    parts = {"lora_sft": lora_sft, "distill_step": distill_step, "pipeline_kv_reuse": pipeline_kv_reuse,
             "pipeline_engine": pipeline_engine}
    unknown = [p for p in args.parts.split(",") if p not in parts]
    if unknown:
        ap.error(f"--parts names '{unknown[0]}'; the parts are {', '.join(parts)}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch sees no CUDA device; use --device cpu --toy.")
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    plan = Plan.toy() if args.toy else Plan()
    overrides = {k: getattr(args, k) for k in plan_flags}
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    peak = peak_flops(device, args.peak_tflops)

    import peft
    import transformers

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "argv": sys.argv[1:] if argv is None else argv,
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "peft": peft.__version__, "toy": args.toy, "dtype": str(dtype), "peak_flops": peak,
    }
    t0 = time.perf_counter()
    for name in args.parts.split(","):
        extra = {"peak": peak} if name == "lora_sft" else {}
        report[name] = run_part(name, parts[name], plan.budget_seconds[name], device, plan=plan, dtype=dtype, **extra)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    line = json.dumps(report, allow_nan=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(line)
    return report


if __name__ == "__main__":
    main()
