"""The public Python API: the top-level names resolve, and PEFT's own LoraConfig is accepted."""

import torch
from peft import LoraConfig

import starlora
from starlora.models import LORA_TARGETS


def test_every_exported_name_resolves():
    for name in starlora.__all__:
        assert getattr(starlora, name) is not None, name


def test_exported_names_are_the_objects_not_submodules_of_the_same_name():
    """Importing a submodule binds it on the package: an export sharing a module's name (report in report.py) would
    then import as the module. Checked after every module is loaded."""
    import importlib
    import pkgutil
    import types

    for module in pkgutil.iter_modules(starlora.__path__):
        if not module.name.startswith("_"):  # __main__ would run the command line
            importlib.import_module(f"starlora.{module.name}")
    from starlora import report

    assert callable(report) and not isinstance(report, types.ModuleType)
    for name in starlora.__all__:
        assert not isinstance(getattr(starlora, name), types.ModuleType), name


def test_attach_lora_takes_peft_config_and_matches_train_settings():
    base, _ = starlora.load_model("tiny-random")
    ours = starlora.attach_lora(base, starlora.TrainSettings(lora_r=4, lora_alpha=8, lora_dropout=0.1, seed=3))
    mine = {k: v.clone() for k, v in ours.state_dict().items() if "lora_" in k}
    base = ours.unload()
    peft = starlora.attach_lora(
        base,
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"),
        seed=3,
    )
    theirs = {k: v for k, v in peft.state_dict().items() if "lora_" in k}
    assert mine.keys() == theirs.keys() and len(mine) == 2 * 7 * 2  # A and B, seven projections, two layers
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # same seed, same initial adapter


def test_dir_lists_the_lazily_exported_names():
    assert set(starlora.__all__) <= set(dir(starlora))


def test_the_human_loop_is_a_package_that_imports_nothing_from_the_simulation():
    import subprocess
    import sys

    code = (
        "import sys, starlora.human_loop.project, starlora.human_loop.serve, starlora.human_loop.labelstudio; "
        "print(sorted(m for m in sys.modules if m == 'starlora.experiment'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from starlora import project, serve
    from starlora.human_loop import project as moved_project
    from starlora.human_loop import serve as moved_serve

    assert project is moved_project and serve is moved_serve  # the old import paths are the same modules
