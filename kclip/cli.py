"""The `kclip` command: `kclip train|evaluate|index|search|serve|convert|demo [flags]`.

Each subcommand takes the flags of its script in scripts/ (`kclip train --config X` is
`python scripts/train.py --config X`); `kclip SUBCOMMAND --help` lists them.
"""

import importlib
import sys

from kclip.commands import COMMANDS


def usage():
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: kclip SUBCOMMAND [flags]   (kclip SUBCOMMAND --help for its flags)", "",
             "Natural-language image search with a CLIP-style dual encoder on Keras 3.", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    """Runs one subcommand; returns its exit status (2 for an unknown one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from kclip import __version__

        print(f"kclip {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown subcommand {name!r}; choose one of {', '.join(COMMANDS)}.\n\n{usage()}",
              file=sys.stderr)
        return 2
    result = importlib.import_module(COMMANDS[name][0]).main(rest, prog=f"kclip {name}")
    # evaluate returns its metrics; any non-integer result is a success.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
