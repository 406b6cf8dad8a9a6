"""Evaluation: generation, metrics, the eval harness (zero-/few-shot baselines vs fine-tunes), forgetting probes,
WiSE-FT interpolation, before/after comparisons."""

_LAZY = {
    "generate": "generation",
    "generate_with": "generation",
    "evaluate": "harness",
    "forgetting": "forgetting",
    "interpolate": "interpolate",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
