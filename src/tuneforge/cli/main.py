"""`tuneforge <verb>`: one Typer app; every module of this package that defines `register(app)` adds its verbs.

Verbs are thin wrappers over the Python API, so the CLI and the library cannot drift. A TuneforgeError is a
user mistake (bad config key, missing file): it is printed as `error: <message>` with exit code 2 and no
traceback; `--debug` (anywhere on the line) or TUNEFORGE_DEBUG=1 shows the traceback too.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback

import typer

from ..errors import TuneforgeError

app = typer.Typer(
    name="tuneforge",
    help="Adapt pretrained networks to new tasks: LoRA and the PEFT family, training, evaluation, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also TUNEFORGE_DEBUG=1)."),
) -> None:
    """tuneforge: fine-tune, evaluate, merge and serve adapters."""


def register_verbs(target: typer.Typer = app) -> list[str]:
    """Import every module of tuneforge.cli and call its `register(app)`. A verb whose optional dependency is
    missing is skipped with a warning, so one absent extra never takes the whole CLI down."""
    import tuneforge.cli as package

    registered = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in ("main", "__main__") or info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{package.__name__}.{info.name}")
        except ImportError as err:
            print(f"warning: `tuneforge {info.name}` is unavailable: {err}", file=sys.stderr)
            continue
        register = getattr(module, "register", None)
        if callable(register):
            register(target)
            registered.append(info.name)
    return registered


_registered = False


def _ensure_registered() -> None:
    global _registered
    if not _registered:
        _registered = True
        register_verbs(app)


def _debug_enabled() -> bool:
    return os.environ.get("TUNEFORGE_DEBUG", "").lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `tuneforge` script and `python -m tuneforge`; exits with the command's status.
    Click handles usage errors and --help itself (standalone mode); only our errors are caught here."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_enabled() or "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        _ensure_registered()
        typer.main.get_command(app).main(args=args, prog_name="tuneforge", standalone_mode=True)
    except TuneforgeError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
