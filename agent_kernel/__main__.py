"""Command line: `python -m agent_kernel install-kernelspec | demo`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_kernel")
    commands = parser.add_subparsers(dest="command", required=True)
    spec = commands.add_parser("install-kernelspec", help="install the agent-sandbox kernelspec")
    spec.add_argument("--user", action="store_true", help="install for this user only")
    spec.add_argument("--prefix", help="install under this prefix (e.g. sys.prefix of a venv)")
    commands.add_parser("models", help="local models: list | fetch [NAME] | info NAME|PATH", add_help=False)
    demo = commands.add_parser("demo", help="execute examples/quickstart.ipynb headless and check its answers")
    demo.add_argument("--model", help="a litellm model name; default: $AGENT_KERNEL_MODEL, else the embedded local model")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"]:
        from .model_fetch import main_models

        return main_models(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "install-kernelspec":
        from .sandbox import install_kernelspec

        print(f"installed the agent-sandbox kernelspec in {install_kernelspec(args.user, args.prefix)}")
        return 0
    from ._demo import run_demo

    return run_demo(args.model)


if __name__ == "__main__":
    sys.exit(main())
