"""``vlmtune`` command line: ``train``, ``eval``, ``merge``, ``info``, ``analyze``, ``bench``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
this file only routes. User errors (bad config, bad data, bad adapter) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from vlmtune import __version__

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vlmtune.train.command", "train a recipe from configs/ (key=value overrides)"),
    "eval": ("vlmtune.eval.command", "evaluate a model, run folder or predictions file on a benchmark"),
    "merge": ("vlmtune.merge", "merge an adapter into its base model and write a plain model folder"),
    "info": ("vlmtune.info", "show recipes, a resolved config, or an adapter folder"),
    "analyze": ("vlmtune.analysis.command", "DoRA weight-decomposition analysis of run folders"),
    "bench": ("vlmtune.bench", "built-in comparisons (e.g. `vlmtune bench vit`)"),
    "plan": (
        "vlmtune.plan",
        "per-GPU memory of a recipe under DDP / FSDP2 / offload / QLoRA, from config.json",
    ),
}


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user as is (no traceback)."""
    from vlmtune.core.errors import USER_ERRORS

    return USER_ERRORS


def recipes_epilog() -> str:
    from vlmtune.core.config import list_recipes, recipe_description

    lines = ["recipes (configs/):"]
    for name, path in list_recipes().items():
        lines.append(f"  {name:<22} {recipe_description(path)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmtune",
        description="Parameter-efficient fine-tuning of vision-language models.",
        epilog=recipes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vlmtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("vlmtune"):
                continue  # subcommand not built yet
            raise
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=recipes_epilog() if name == "train" else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args``, but ``key=value`` overrides may stand anywhere, also after a ``--flag`` (argparse
    stops filling a positional list at the first option and would call the rest unrecognized)."""
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    if overrides and isinstance(getattr(args, "overrides", None), list):
        args.overrides += overrides
        rest = [a for a in rest if a not in overrides]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parse(parser, argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 0
    # --quiet: errors only, so vlmtune's own warnings (e.g. records without ids) are held back too
    logging.getLogger("vlmtune").setLevel(logging.ERROR if getattr(args, "quiet", False) else logging.NOTSET)
    try:
        return int(args._main(args) or 0)
    except user_error_types() as e:
        print(f"vlmtune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlmtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
