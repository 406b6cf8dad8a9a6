"""Evaluation: generation, metrics, before/after comparisons."""


def __getattr__(name):
    if name in ("generate", "generate_with"):
        from . import generation

        return getattr(generation, name)
    raise AttributeError(name)
