"""Command line for deployments: key material, and a local SuperLink + SuperNodes to try one.

    python -m simulations.deploy keys --host superlink.lan --host 10.0.0.5 --nodes 2
    python -m simulations.deploy local --nodes 2
        (prints how to ``flwr run`` against it; Ctrl-C stops every process it started)
    python -m simulations.deploy run --nodes 2 -- dataset=digits num_rounds=3
        (starts the deployment, runs one experiment with these Hydra overrides, stops)

Key material (private keys included) goes to ``$FL_EXT_HOME/deploy`` unless ``--out`` /
``--material`` say otherwise: outside the repository. The certificate always names the
loopback addresses too (``--no-loopback`` to leave them out), so ``local``/``run`` work with
the same material; with the default directory they create it (loopback only) when missing.
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
from fl_ext.security.tls import write_node_key_pair
from fl_ext.tracking.paths import fl_ext_home
from simulations.deployment import CONNECTION, LocalDeployment
from simulations.flwr_cli import run_app


def default_material_dir() -> Path:
    """``$FL_EXT_HOME/deploy``: key material lives outside the repository by default."""
    return fl_ext_home() / "deploy"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulations.deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="generate CA, SuperLink certificate, SuperNode keys")
    keys.add_argument(
        "--out", type=Path, default=None, help="directory (default: $FL_EXT_HOME/deploy)"
    )
    keys.add_argument(
        "--host",
        action="append",
        default=[],
        help="SuperLink host name or IP address (repeat for several)",
    )
    keys.add_argument(
        "--no-loopback",
        action="store_true",
        help="leave localhost, 127.0.0.1 and ::1 out of the SuperLink certificate",
    )
    keys.add_argument("--nodes", type=int, required=True, help="SuperNode key pairs to create")
    keys.add_argument("--overwrite", action="store_true")
    for name, text in (
        ("local", "start SuperLink + SuperNodes on 127.0.0.1 until Ctrl-C"),
        ("run", "start them, run one experiment, stop"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--material",
            type=Path,
            default=None,
            help="output of `keys` (default: $FL_EXT_HOME/deploy, created if missing)",
        )
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
        out = (args.out or default_material_dir()).resolve()
        material = generate_material(
            out,
            hosts=args.host,
            num_nodes=args.nodes,
            overwrite=args.overwrite,
            loopback=not args.no_loopback,
        )
        print(f"Wrote CA, SuperLink certificate, {args.nodes} SuperNode key pairs and the")
        print(f"checkpoint signing key to {material.root}")
        print(f"The certificate is valid for: {', '.join(material.server_hosts())}")
        return 0
    home = (args.home or fl_ext_home() / "deployment").resolve()
    material = _local_material(args.material, args.nodes, tls=not args.insecure)
    deployment = LocalDeployment(
        home,
        material,
        num_nodes=args.nodes,
        tls=not args.insecure,
        extra_env={"FL_EXT_HOME": str(fl_ext_home())},
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        deployment.start()
    except (RuntimeError, TimeoutError, ValueError, OSError) as err:
        print(f"error: the local deployment did not start: {err}", file=sys.stderr)
        return 2
    try:
        print(f"SuperLink {deployment.address} with {args.nodes} SuperNodes online.")
        if args.command == "run":
            overrides = list(args.overrides)
            if not any(o.lstrip("+~").startswith("min_available_nodes=") for o in overrides):
                overrides.append(f"min_available_nodes={args.nodes}")  # wait for exactly these
            outcome = run_app(
                deployment,
                overrides,
                connection=CONNECTION,
                num_supernodes=None,
                echo=True,
            )
            print(f"Run {outcome.run_id}: {outcome.status}")
            return 0 if outcome.ok else 1
        print("Run an experiment on it from the project directory:")
        print(
            f"  FLWR_HOME={home} flwr run . {CONNECTION} --stream "
            "--run-config 'overrides=\"dataset=digits num_rounds=3 "
            f"min_available_nodes={args.nodes}\"'"
        )
        print(f"Logs: {home}/*.log. Ctrl-C stops every process started here.")
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        deployment.stop()
    return 0


def _local_material(given: Path | None, num_nodes: int, *, tls: bool) -> DeploymentMaterial:
    """The material for a local deployment; the default directory is created or topped up."""
    if given is not None:
        return DeploymentMaterial(given.resolve())
    material = DeploymentMaterial(default_material_dir())
    if not tls:
        return material
    if not material.ca_cert.exists():
        generate_material(material.root, hosts=[], num_nodes=num_nodes)
        print(f"Created loopback-only key material in {material.root}")
    for i in range(num_nodes):  # more nodes than last time: add their key pairs
        if not material.node_public_key(i).exists():
            write_node_key_pair(material.node_key(i), material.node_public_key(i))
    return material


if __name__ == "__main__":
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    sys.exit(main())
