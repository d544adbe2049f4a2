"""`starlora export SOURCE --merged DIR`: the adapter merged into its base (PEFT's merge_and_unload), saved with
its tokenizer and a model card, so that `AutoModelForCausalLM.from_pretrained(DIR)` loads it with neither starlora
nor PEFT installed. starlora_config.json beside it keeps the configuration that made it, so `starlora predict DIR`
still knows the task.

The merge runs in fp32 (W + scale x B A added once, in full precision) and the result is saved in the dtype the
base was trained in. A base quantized by bitsandbytes is refused: the adapter learned against the rounded weights,
and merged into them its small update would be lost in their rounding again, while merged into the unrounded
weights it would make a model that was never evaluated.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from .errors import StarloraError
from .files import write_json
from .sources import CONFIG_FILE, open_source

logger = logging.getLogger(__name__)


def export_merged(source, out, command: str | None = None) -> Path:
    """Write the merged model of `source` (a project, run or adapter folder) to the new folder `out`; returns it."""
    from .card import write_card
    from .hardware import DTYPES
    from .provenance import versions

    found = open_source(source)
    out = Path(out)
    if found.adapter is None:
        raise StarloraError(f"{found.path}: a model folder already, with no adapter to merge")
    if found.cfg is not None and found.cfg.quantization != "none":
        raise StarloraError(
            f"{found.path}: the base was quantized ({found.cfg.quantization}, bitsandbytes): the "
            "adapter learned against the rounded weights, so merging it into them loses its update "
            "to rounding, and into the full-precision weights makes a model never evaluated; use "
            "the adapter as it is (PeftModel.from_pretrained on the quantized base)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StarloraError(f"--merged {out}: exists and is not an empty folder; choose a new folder")
    if not out.absolute().parent.is_dir():
        raise StarloraError(f"--merged {out}: no folder {out.absolute().parent}")
    model, tokenizer = found.load(dtype="fp32")
    merged = model.merge_and_unload()
    dtype = found.cfg.dtype if found.cfg else "fp32"
    merged = merged.to(DTYPES[dtype])
    tmp = out.with_name(out.name + ".export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if found.cfg is not None:
            write_card(tmp, found.cfg, found.curve, command, f"{found.path.name}: merged", merged=True)
            write_json(
                tmp / CONFIG_FILE,
                {
                    "config": dataclasses.asdict(found.cfg),
                    "curve": found.curve,
                    "user_files": found.user_files,
                    "adapter": str(found.adapter),
                    "versions": versions(),
                },
            )
        else:
            (tmp / "README.md").write_text(
                f"# {found.path.name}: merged\n\n`{found.model}` with the LoRA adapter "
                f"`{found.adapter}` merged in by starlora (PEFT's merge_and_unload).\n"
            )
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)  # the model folder exists whole or not at all
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StarloraError(f"--merged {out}: cannot write ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        f"{out}: {found.model} with {found.adapter} merged in ({dtype}); load it with "
        f"AutoModelForCausalLM.from_pretrained({str(out)!r})"
    )
    return out
