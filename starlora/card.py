"""Model cards for saved adapters (the Hub's README.md format, written with huggingface_hub's ModelCard) and
`--push-to-hub`: the adapter with its card uploaded through huggingface_hub. A failed upload is a warning: the local
adapter and card stay as they are."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from .errors import StarloraWarning

logger = logging.getLogger(__name__)
HUB_BASE_MODELS = {
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "embedded": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def hub_dataset(task: str, train_file: str | None) -> str | None:
    """The hub dataset the pool came from, where known: --dataset's, or a built-in task's."""
    from .data import HUB, HUB_PREFIX

    if train_file:
        return (
            train_file[len(HUB_PREFIX) :].rpartition("@")[0].partition(":")[0]
            if str(train_file).startswith(HUB_PREFIX)
            else None
        )
    return HUB[task][0] if task in HUB else None


def write_card(folder, cfg, curve: list[dict], command: str | None, title: str, merged: bool = False) -> Path:
    """folder/README.md: YAML front matter (base_model, library_name peft, tags, datasets) and the active-learning
    provenance: strategy, seed, labeled examples and accuracy per round, the configuration, the command. merged: the
    folder holds the base model with the adapter merged in (export --merged), loaded by transformers alone."""
    from huggingface_hub import ModelCard, ModelCardData

    base = HUB_BASE_MODELS.get(cfg.model, cfg.model if "/" in cfg.model and not Path(cfg.model).exists() else None)
    dataset = hub_dataset(cfg.task, getattr(cfg, "train_file", None))
    data = ModelCardData(
        base_model=base,
        library_name="transformers" if merged else "peft",
        tags=["starlora", "lora", "active-learning", cfg.strategy, cfg.task],
        datasets=[dataset] if dataset else None,
    )
    what = (
        f"`{cfg.model}` with a LoRA adapter merged in (PEFT's merge_and_unload)"
        if merged
        else f"A LoRA adapter for `{cfg.model}`"
    )
    usage = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained("<this folder or repo>")\n'
        'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")'
        if merged
        else "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base or cfg.model}"), '
        '"<this folder or repo>")'
    )
    rows = "\n".join(
        f"| {r['round']} | {r['labeled']} | {'–' if r.get('accuracy') is None else format(r['accuracy'], '.1f')} |"
        for r in curve
    )
    body = f"""
# {title}

{what}, trained by starlora's active-learning loop on `{cfg.task}`:
strategy `{cfg.strategy}`, seed {cfg.seed}, {curve[-1]["labeled"] if curve else 0} labeled examples.

## Learning curve

| round | labeled examples | accuracy (%) |
|---|---|---|
{rows}

## How it was made

```
{command or "starlora Python API"}
```

LoRA r {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout}; {cfg.epochs} epochs per round, learning rate
{cfg.lr}, batch {cfg.batch_size}; STAR's B decay {cfg.b_decay} where the strategy uses it; base weights
{cfg.dtype}{"" if getattr(cfg, "quantization", "none") == "none" else ", " + cfg.quantization}.

```python
{usage}
```
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = Path(folder) / "README.md"
    card.save(path)
    return path


def push(folder, repo_id: str, api=None) -> bool:
    """Upload the folder (adapter and card) to the model repo `repo_id`, creating it if needed. Any failure (no
    network, no token, no permission) is one warning line; nothing local is touched. True when uploaded."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="starlora: adapter and model card",
        )
    except Exception as e:  # noqa: BLE001 - whatever the Hub client raises, the local work is kept
        warnings.warn(
            f"--push-to-hub {repo_id}: upload failed ({str(e).splitlines()[0][:160]}); the adapter and its "
            f"card stay in {folder}",
            StarloraWarning,
            stacklevel=2,
        )
        return False
    logger.info(f"pushed {folder} to https://huggingface.co/{repo_id}")
    return True
