"""starlora: LoRA fine-tuning inside an active-learning loop, with STAR (arXiv 2403.01165).

The names a user needs are importable from here (loaded on first use, so `import starlora` stays light):

    from starlora import load_model, get_task, load_data, resolve, run, report
"""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by PEFT whenever it is installed) warns at import on AVX512-BF16 CPUs that it cannot fetch a
# hub kernel for a weight layout that models._no_cpu_repacking switches off anyway
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

_EXPORTS = {  # name -> module
    "load_model": "models",
    "get_task": "tasks",
    "load_data": "data",
    "Example": "data",
    "MethodConfig": "config",
    "RunConfig": "config",
    "resolve": "config",
    "PROTOCOLS": "config",
    "run": "experiment",
    "run_seeds": "experiment",
    "method_settings": "rounds",
    "TrainSettings": "training",
    "attach_lora": "training",
    "train": "training",
    "ScoringSettings": "scoring",
    "score": "scoring",
    "get_strategy": "strategies",
    "select": "strategies",
    "STRATEGIES": "strategies",
    "Strategy": "strategies",
    "register_strategy": "strategies",
    "Acquisition": "acquisition",
    "BaseScoreCache": "acquisition",
    "acquisition_scores": "acquisition",
    "evaluate": "evaluation",
    "report": "reporting",
    "StarloraError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'starlora' has no attribute {name!r}")


def __dir__():
    """The lazily exported names too (dir(starlora), tab completion), not only those loaded so far."""
    return sorted({*globals(), *__all__})
