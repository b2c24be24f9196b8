"""Make DVC-versioned copies of a built-in dataset, for ``dataset=dvc`` experiments.

    python -m simulations.dvc_data init --repo DIR [--dataset mnist5k|digits] [--remote DIR]
    python -m simulations.dvc_data update --repo DIR --transform drop-class=3|subsample=0.5

``init`` makes DIR a git + DVC repo (if it is not one), writes the dataset as
``data/<name>.npz``, ``dvc add``s it, pushes it to a local directory remote (default
``DIR/../<name>-dvc-remote``) and commits. ``update`` publishes a changed version as a new
commit. Both print the commit and DVC's md5; train on a version with
``dataset=dvc dataset.repo=DIR dataset.path=data/<name>.npz dataset.rev=<commit>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fl_ext.data.dvc_export import BUILTIN, TRANSFORMS, Published, init_repo, update_repo


def _report(published: Published) -> str:
    return "\n".join(
        [
            f"repo:     {published.repo}",
            f"path:     {published.path}",
            f"commit:   {published.commit}",
            f"md5:      {published.md5}",
            f"examples: {published.num_examples}",
            f"remote:   {published.remote}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, publish the version, print where it is; 2 on a bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.dvc_data", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="publish a built-in dataset as version one")
    init.add_argument("--repo", type=Path, required=True)
    init.add_argument("--dataset", choices=sorted(BUILTIN), default="digits")
    init.add_argument("--remote", type=Path, default=None, help="local DVC remote directory")
    update = commands.add_parser("update", help="publish a transformed version")
    update.add_argument("--repo", type=Path, required=True)
    update.add_argument(
        "--transform", required=True, help=f"one of: {', '.join(f'{t}=...' for t in TRANSFORMS)}"
    )
    update.add_argument("--path", default=None, help="the .npz in the repo (default: the only one)")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            published = init_repo(args.repo, dataset=args.dataset, remote=args.remote)
        else:
            published = update_repo(args.repo, transform=args.transform, path=args.path)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_report(published))
    return 0


if __name__ == "__main__":
    sys.exit(main())
