"""The ``kinko`` command: one group, subcommands per area, errors mapped in one place."""

from __future__ import annotations

from typing import Any

import click

from kinko import __version__
from kinko.cli.errors import exit_code_for
from kinko.errors import KinkoError


class KinkoGroup(click.Group):
    """A click group that turns :class:`KinkoError` into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KinkoError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exit_code_for(exc))


@click.group(cls=KinkoGroup)
@click.version_option(__version__, prog_name="kinko")
def cli() -> None:
    """kinko: encryption at rest for Kubernetes-style clusters.

    Values are sealed exactly as kube-apiserver seals them (aescbc, aesgcm, secretbox,
    KMS v2), driven by an ordinary EncryptionConfiguration file.
    """


def _register() -> None:
    from kinko.cli.cluster_admin import cluster
    from kinko.cli.cluster_client import add_cluster_commands
    from kinko.cli.demo import demo
    from kinko.cli.etcd import etcd
    from kinko.cli.keys import keys
    from kinko.cli.kms import kms
    from kinko.cli.token import token
    from kinko.cli.up import up

    cli.add_command(cluster)
    cli.add_command(demo)
    cli.add_command(etcd)
    cli.add_command(keys)
    cli.add_command(kms)
    cli.add_command(token)
    cli.add_command(up)
    add_cluster_commands(cli)


_register()


def main() -> None:
    cli(prog_name="kinko")


if __name__ == "__main__":
    main()
