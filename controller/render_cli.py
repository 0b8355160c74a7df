"""``portcullis render -f PATH...``: what the controller would push, without a cluster.

Prints the snapshot (private keys replaced by a fingerprint) on stdout and the problems on
stderr. Exit status: 0 clean or warnings only, 1 when any problem is an error, 2 when the input
cannot be read at all.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from controller.annotations import annotation_table
from controller.certificates import utc_now
from controller.manifests import ManifestError, load_paths
from controller.model import Inputs
from controller.problems import Problem, has_errors
from controller.render import RenderConfig, render


def add_render_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared with ``portcullis local``: the renderer's whole configuration."""
    parser.add_argument("-f", "--filename", dest="paths", action="append", default=[], metavar="PATH",
                        help="manifest file or folder (repeatable; folders are read recursively)")
    parser.add_argument("--ingress-class", default="portcullis", help="IngressClass name served (default: %(default)s)")
    parser.add_argument("--controller-name", default="portcullis.io/ingress-controller",
                        help="IngressClass spec.controller value (default: %(default)s)")
    parser.add_argument("--watch-namespaces", default="", help="comma-separated namespaces (default: all)")
    parser.add_argument("--default-certificate", default=None, metavar="NS/NAME",
                        help="kubernetes.io/tls Secret served when no host certificate matches")


def render_config(args: argparse.Namespace) -> RenderConfig:
    return RenderConfig(
        ingress_class=args.ingress_class,
        controller_name=args.controller_name,
        watch_namespaces=tuple(n.strip() for n in args.watch_namespaces.split(",") if n.strip()),
        default_certificate=args.default_certificate,
        now=utc_now(),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_render_config_arguments(parser)
    parser.add_argument("--annotations", action="store_true", help="print the annotation table and exit")


def print_problems(problems: list[Problem], stream: TextIO | None = None) -> None:
    for problem in problems:
        print(problem, file=stream or sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.annotations:
        print(annotation_table())
        return 0
    if not args.paths:
        print("portcullis render: give at least one -f PATH", file=sys.stderr)
        return 2
    try:
        objects = load_paths(args.paths)
    except ManifestError as exc:
        print(f"portcullis render: {exc}", file=sys.stderr)
        return 2
    inputs, problems = Inputs.from_objects(objects)
    snapshot, render_problems = render(inputs, render_config(args))
    all_problems = sorted(set(problems) | set(render_problems))
    print(snapshot.to_json(redact_keys=True, indent=2))
    print_problems(all_problems)
    return 1 if has_errors(all_problems) else 0
