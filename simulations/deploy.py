"""Command line for deployments: key material, and a local SuperLink + SuperNodes to try one.

    python -m simulations.deploy keys --out deploy/ --host 127.0.0.1 --host superlink.lan --nodes 2
    python -m simulations.deploy local --material deploy/ --nodes 2
        (prints how to ``flwr run`` against it; Ctrl-C stops every process it started)
    python -m simulations.deploy run --material deploy/ --nodes 2 -- dataset=digits num_rounds=3
        (starts the deployment, runs one experiment with these Hydra overrides, stops)

On real machines the same files serve the commands the README's "Deploy" section lists.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from fl_ext.security import DeploymentMaterial, generate_material
from fl_ext.tracking.paths import fl_ext_home
from simulations.deployment import CONNECTION, LocalDeployment
from simulations.flwr_cli import run_app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulations.deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="generate CA, SuperLink certificate, SuperNode keys")
    keys.add_argument("--out", type=Path, required=True)
    keys.add_argument(
        "--host",
        action="append",
        required=True,
        help="SuperLink host name or IP address (repeat for several)",
    )
    keys.add_argument("--nodes", type=int, required=True, help="SuperNode key pairs to create")
    keys.add_argument("--overwrite", action="store_true")
    for name, text in (
        ("local", "start SuperLink + SuperNodes on 127.0.0.1 until Ctrl-C"),
        ("run", "start them, run one experiment, stop"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--material", type=Path, required=True, help="output of `keys`")
        p.add_argument("--nodes", type=int, default=2)
        p.add_argument(
            "--home",
            type=Path,
            default=None,
            help="FLWR_HOME for the deployment (default: $FL_EXT_HOME/deployment)",
        )
        p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication")
        if name == "run":
            p.add_argument("overrides", nargs="*", help="Hydra overrides, after --")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "keys":
        material = generate_material(
            args.out, hosts=args.host, num_nodes=args.nodes, overwrite=args.overwrite
        )
        print(f"Wrote CA, SuperLink certificate, {args.nodes} SuperNode key pairs and the")
        print(f"checkpoint signing key to {material.root.resolve()}")
        return 0
    home = (args.home or fl_ext_home() / "deployment").resolve()
    deployment = LocalDeployment(
        home,
        DeploymentMaterial(args.material.resolve()),
        num_nodes=args.nodes,
        tls=not args.insecure,
        extra_env={"FL_EXT_HOME": str(fl_ext_home())},
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with deployment:
        print(f"SuperLink {deployment.address} with {args.nodes} SuperNodes online.")
        if args.command == "run":
            outcome = run_app(
                deployment,
                list(args.overrides),
                connection=CONNECTION,
                num_supernodes=None,
                echo=True,
            )
            print(f"Run {outcome.run_id}: {outcome.status}")
            return 0 if outcome.ok else 1
        print("Run an experiment on it from the project directory:")
        print(
            f"  FLWR_HOME={home} flwr run . {CONNECTION} --stream "
            "--run-config 'overrides=\"dataset=digits num_rounds=3\"'"
        )
        print(f"Logs: {home}/*.log. Ctrl-C stops every process started here.")
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    sys.exit(main())
