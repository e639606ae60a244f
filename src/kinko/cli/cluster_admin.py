"""``kinko cluster …``: the encryption of a running kinko cluster, from the operator's side.

A thin shell over the ``kinko.io/v1`` methods of :class:`kinko.cluster.client.ClusterClient`:

- ``kinko cluster get``: ``Master Status: …`` in the seed's words (``Key Protect feature
  enablement in progress.``, ``Ready (3m)``), then the root key, its expiry, and
  per-resource migration progress while one runs (with the reason when it paused);
- ``kinko cluster encryption status``: the coverage report, per resource;
- ``kinko cluster kms enable --key ROOT_KEY``: KMS v2 on that root key, then a progress bar
  until the cluster is Ready;
- ``kinko cluster migrate [--resource R]… [--dry-run]``: rewrite stale objects now, with
  the same progress bar (or only count them).

Connection options, ``-o table|json|yaml`` and the test seam are those of ``kinko secret``
(:func:`kinko.cli.cluster_client.remote`): ``--data-dir`` (a running ``kinko up``) or
``--server``/``--token``/``--ca``. Errors propagate as :class:`~kinko.errors.KinkoError`
and leave with the exit codes of ``kinko.cli.errors`` (NotFound 6, Conflict 7,
Unauthorized 8, Forbidden 9, UnavailableError 12, InvalidArgument 4). Waiting stops with
Ctrl-C (exit 130) without stopping anything on the server.

Invariants: warnings go to stderr only, once each, as ``warning: …``, in every format, so
``-o json`` and ``-o yaml`` print only the server's document on stdout and a terminal (where
both streams meet) shows each warning once; the progress bar and pause reasons while waiting
go to stderr too. Every line printed ends with a newline. Text from the server is printed as
text, never as rich markup, without control characters.

Tests pass a :class:`ClusterAdminHook` as the click context object: the client factory of
``kinko secret``'s :class:`~kinko.cli.cluster_client.ClusterHook` plus the sleep between
status polls.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import click
import yaml
from rich.console import Console, JustifyMethod
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from kinko.cli.cluster_client import ClusterHook, human_age, remote
from kinko.cluster.client import (
    ClusterClient,
    ClusterStatus,
    MigrationPlan,
    MigrationProgress,
    ResourceCoverage,
    RootKeyStatus,
)
from kinko.cluster.endpoints import read_endpoints
from kinko.errors import InvalidArgument

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "ClusterAdminHook",
    "cluster",
    "master_status_line",
]

#: Seconds between status polls while waiting for the cluster to be Ready.
DEFAULT_POLL_INTERVAL: Final = 1.0
#: Width of tables when the stream is not a terminal (so nothing is cut in pipes).
PIPE_WIDTH: Final = 200
#: Exit code after Ctrl-C stopped the waiting (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED: Final = 130


@dataclass(frozen=True, slots=True)
class ClusterAdminHook(ClusterHook):
    """:class:`ClusterHook` plus the sleep between status polls (tests advance a fake server
    on it, or raise KeyboardInterrupt from it)."""

    sleep: Callable[[float], None] = field(default=time.sleep)


# --------------------------------------------------------------------------- output


def _console(*, err: bool = False) -> Console:
    stream = sys.stderr if err else sys.stdout
    out = Console(file=stream)
    if not out.is_terminal:
        out = Console(file=stream, width=PIPE_WIDTH)
    return out


def _clean(value: object) -> str:
    text = "" if value is None else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _t(value: object) -> Text:
    """Server-provided text as rich Text: no markup, no control characters."""
    return Text(_clean(value))


def _echo_doc(doc: object, fmt: str) -> None:
    if fmt == "yaml":
        click.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), nl=False)
    else:
        click.echo(json.dumps(doc, indent=2))


def _warn(warnings: Sequence[str], *, already: set[str] | None = None) -> None:
    """Each warning on stderr; with ``already``, only those not printed before (then added)."""
    for warning in warnings:
        if already is not None:
            if warning in already:
                continue
            already.add(warning)
        click.echo(f"warning: {_clean(warning)}", err=True)


def master_status_line(status: ClusterStatus, now: datetime) -> str:
    """``Master Status: <masterStatus>``; a bare ``Ready`` gets its age from ``readySince``
    (``Ready (3m)``), and a server that words the age itself is printed as it is."""
    words = _clean(status.master_status)
    if words == "Ready" and status.ready_since is not None:
        words += f" ({human_age(now - status.ready_since)})"
    return f"Master Status: {words}"


def _root_key_text(key: RootKeyStatus) -> str:
    text = key.id
    if key.alias:
        text += f" (alias {key.alias})"
    if key.version is not None:
        text += f", version {key.version}"
    if key.state:
        text += f", {key.state}"
    return _clean(text)


def _expiry_text(key: RootKeyStatus, now: datetime) -> str:
    left: timedelta | None = None
    if key.expires_in_seconds is not None:
        left = timedelta(seconds=key.expires_in_seconds)
    elif key.expiration_date is not None:
        left = key.expiration_date - now
    if left is None:
        return "never"
    when = "" if key.expiration_date is None else f"{_rfc3339(key.expiration_date)} "
    if left.total_seconds() <= 0:
        return f"{when}(expired {human_age(-left)} ago)"
    return f"{when}(in {human_age(left)})"


def _rfc3339(stamp: datetime) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _progress_text(progress: MigrationProgress) -> str:
    if progress.total is None:
        return f"{progress.done}/?"
    percent = 100 * progress.done // progress.total if progress.total else 100
    return f"{progress.done}/{progress.total} ({percent}%)"


def _migrations_table(migrations: Sequence[MigrationProgress]) -> Table:
    table = Table(title="Migrations", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("RESOURCE", "left"),
        ("STATE", "left"),
        ("DONE", "right"),
        ("REWRITTEN", "right"),
        ("UNREADABLE", "right"),
        ("CONFLICTS", "right"),
        ("REASON", "left"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name != "REASON")
    for m in migrations:
        table.add_row(
            _t(m.resource),
            _t(m.state or "-"),
            _progress_text(m),
            str(m.rewritten),
            str(m.unreadable),
            str(m.conflicts),
            _t(m.reason or ""),
        )
    return table


def _pause_reasons(status: ClusterStatus) -> dict[str, str]:
    """resource → why its migration paused (the phase alone when no record says)."""
    reasons = {
        m.resource: m.reason or "no reason given" for m in status.migrations if m.state == "paused"
    }
    if status.phase == "Paused" and not reasons:
        reasons[""] = "no reason given"
    return reasons


def _pause_line(resource: str, reason: str) -> str:
    where = f"{resource}: " if resource else ""
    return f"Paused: {where}{_clean(reason)}"


# --------------------------------------------------------------------------- kinko cluster


@click.group("cluster")
def cluster() -> None:
    """The cluster's encryption at rest: status, coverage, enabling KMS, migration."""


@cluster.command("get")
@remote
def cluster_get(*, client: ClusterClient, fmt: str) -> None:
    """Show the master status, the root key and its expiry, and migrations.

    Warnings (a root key expiring within 30 days) go to stderr.
    """
    status = client.cluster_status()
    now = datetime.now(UTC)
    _warn(status.warnings)
    if fmt != "table":
        _echo_doc(status.doc, fmt)
        return
    click.echo(master_status_line(status, now))
    click.echo(f"Phase: {_clean(status.phase)}")
    if status.enabling:
        click.echo(f"Enabling: {_clean(status.enabling)}")
    if status.root_key is None:
        click.echo("Root key: none (KMS is not enabled)")
    else:
        click.echo(f"Root key: {_root_key_text(status.root_key)}")
        click.echo(f"Expires: {_expiry_text(status.root_key, now)}")
    for resource, reason in _pause_reasons(status).items():
        click.echo(_pause_line(resource, reason))
    active = [m for m in status.migrations if m.active]
    if active:
        _console().print(_migrations_table(active))


# --------------------------------------------------------------------------- encryption status


@cluster.group("encryption")
def encryption() -> None:
    """Coverage of the cluster's encryption at rest."""


def _coverage_tables(coverage: ResourceCoverage) -> list[Table]:
    noun = "object" if coverage.total == 1 else "objects"
    providers = Table(title=f"{coverage.resource}: {coverage.total} {noun}", title_justify="left")
    providers.add_column("PROVIDER", no_wrap=True)
    providers.add_column("OBJECTS", justify="right", no_wrap=True)
    for prefix, count in coverage.providers:
        providers.add_row(_t(prefix), str(count))
    tables = [providers]
    if coverage.key_ids:
        keys = Table(title=f"{coverage.resource} by KMS key_id", title_justify="left")
        keys.add_column("KEY ID", no_wrap=True)
        keys.add_column("PROVIDER", no_wrap=True)
        keys.add_column("ROOT KEY", no_wrap=True)
        keys.add_column("VERSION", no_wrap=True)
        keys.add_column("CURRENT", no_wrap=True)
        keys.add_column("OBJECTS", justify="right", no_wrap=True)
        for entry in coverage.key_ids:
            keys.add_row(
                _t(entry.key_id),
                _t(entry.provider),
                _t(entry.root_key or "-"),
                _t(entry.version or "-"),
                "yes" if entry.current else "",
                str(entry.count),
            )
        tables.append(keys)
    return tables


def _coverage_summary(coverage: ResourceCoverage) -> list[str]:
    lines = [
        f"  plaintext: {coverage.plaintext}   stale: {coverage.stale}   "
        f"undecryptable: {coverage.undecryptable}"
    ]
    if coverage.undecryptable:
        names = ", ".join(_clean(name) for name in coverage.undecryptable_names)
        more = coverage.undecryptable - len(coverage.undecryptable_names)
        if more > 0:
            names += f"{', ' if names else ''}and {more} more"
        lines.append(f"  undecryptable objects: {names}")
    if coverage.unavailable:
        reason = _clean(coverage.unavailable_reason or "no reason given")
        lines.append(
            f"  not classified: {coverage.unavailable} (a plugin or key service did not "
            f"answer: {reason})"
        )
    m = coverage.migration
    if m is None or m.state is None:
        lines.append("  migration: none")
    else:
        text = f"  migration: {_clean(m.state)}, {_progress_text(m)} done, {m.rewritten} rewritten"
        if m.unreadable or m.conflicts:
            text += f", {m.unreadable} unreadable, {m.conflicts} conflicts"
        if m.state == "paused":
            text += f" (paused: {_clean(m.reason or 'no reason given')})"
        lines.append(text)
    return lines


@encryption.command("status")
@remote
def encryption_status(*, client: ClusterClient, fmt: str) -> None:
    """Per resource: objects per provider, per KMS key_id and root key version, plaintext,
    stale and undecryptable objects, and the migration's progress.

    Warnings (a root key expiring within 30 days) go to stderr; the exit code is 0 whatever
    the report says.
    """
    report = client.encryption_report()
    status = client.cluster_status()
    now = datetime.now(UTC)
    _warn(status.warnings)
    if fmt != "table":
        _echo_doc(report.doc, fmt)
        return
    if status.root_key is not None:
        click.echo(
            f"Root key: {_root_key_text(status.root_key)}; "
            f"expires: {_expiry_text(status.root_key, now)}"
        )
    click.echo(f"Configuration: {_clean(report.config_hash)}")
    out = _console()
    if not report.resources:
        click.echo("no encrypted resources reported", err=True)
    for coverage in report.resources:
        for table in _coverage_tables(coverage):
            out.print(table)
        # Plain lines (already cleaned) go through click like every other line, each with
        # its newline, so the next output never continues the last of them.
        for line in _coverage_summary(coverage):
            click.echo(line)
    for note in report.notes:
        click.echo(f"Note: {_clean(note)}")


# --------------------------------------------------------------------------- waiting


class _RateColumn(ProgressColumn):
    """Objects per second, as rich measures them from the polled counts."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("- obj/s" if speed is None else f"{speed:,.0f} obj/s")


def _wait_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--interval",
        type=click.FloatRange(min=0),
        default=DEFAULT_POLL_INTERVAL,
        show_default=True,
        help="Seconds between status polls while waiting.",
    )(fn)
    return click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Show progress until the cluster is Ready (Ctrl-C stops waiting, not the work).",
    )(fn)


def _sleeper() -> Callable[[float], None]:
    hook = click.get_current_context().find_object(ClusterAdminHook)
    return time.sleep if hook is None else hook.sleep


def _follow(
    client: ClusterClient, status: ClusterStatus, *, resources: Sequence[str], interval: float
) -> ClusterStatus:
    """Polls the status until the phase is Ready, showing a bar per migrating resource on
    stderr and each new pause reason; returns the Ready status.

    Raises what :meth:`ClusterClient.cluster_status` raises; KeyboardInterrupt passes.
    """
    sleep = _sleeper()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    shown: dict[str, str] = {}
    with Progress(*columns, console=_console(err=True)) as bars:
        tasks: dict[str, TaskID] = {}
        while True:
            for m in status.migrations:
                if m.resource not in tasks and (m.active or m.resource in resources):
                    tasks[m.resource] = bars.add_task(_clean(m.resource), total=m.total)
                if m.resource in tasks:
                    bars.update(tasks[m.resource], completed=m.done, total=m.total)
            paused = _pause_reasons(status)
            for resource, reason in paused.items():
                if shown.get(resource) != reason:
                    bars.console.print(
                        _t(
                            f"{_pause_line(resource, reason)} - kinko resumes it once the "
                            "cause is back; still waiting (Ctrl-C stops waiting only)"
                        )
                    )
            for resource in sorted(set(shown) - set(paused)):
                bars.console.print(_t(f"Resumed: {resource or 'the migration'}"))
            shown = paused
            if status.ready:
                for task in tasks.values():
                    done = bars.tasks[task]
                    if done.total is not None:
                        bars.update(task, completed=done.total)
                return status
            sleep(interval)
            status = client.cluster_status()


def _finish(
    client: ClusterClient,
    status: ClusterStatus,
    *,
    fmt: str,
    wait: bool,
    interval: float,
    resources: Sequence[str],
    answer: object,
) -> None:
    """Either prints where things stand (``--no-wait``) or follows them until Ready.

    A status that is Ready already is printed once (with ``-o json|yaml``: the answer).
    """
    now = datetime.now(UTC)
    warned: set[str] = set()
    _warn(status.warnings, already=warned)
    if not wait or status.ready:
        if fmt == "table":
            click.echo(master_status_line(status, now))
            if not status.ready:
                click.echo("Follow it with: kinko cluster get")
        else:
            _echo_doc(answer, fmt)
        return
    if fmt == "table":
        click.echo(master_status_line(status, now))
    try:
        final = _follow(client, status, resources=resources, interval=interval)
    except KeyboardInterrupt:
        click.echo(
            "Stopped waiting. The work goes on in kinko: follow it with kinko cluster get.",
            err=True,
        )
        click.get_current_context().exit(EXIT_INTERRUPTED)
    _warn(final.warnings, already=warned)
    if fmt == "table":
        click.echo(master_status_line(final, datetime.now(UTC)))
    else:
        _echo_doc(final.doc, fmt)


# --------------------------------------------------------------------------- kms enable


@cluster.group("kms")
def kms() -> None:
    """KMS v2 encryption of the cluster."""


def _service_identity(url: str, option: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) of a key service URL, for comparison. The Key Protect
    base path ``/api/v2`` and a trailing slash do not make another service."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidArgument(f"expected {option} as https://host[:port], got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidArgument(f"expected {option} with a valid port, got {url!r}") from None
    path = parts.path.rstrip("/").removesuffix("/api/v2").rstrip("/")
    return parts.scheme, parts.hostname.lower(), port, path


def _own_key_service(client: ClusterClient) -> str:
    """The key service the cluster wraps with: ``keyService`` of the data folder's
    endpoints.json, or, with ``--server``, that server (kinko up serves both APIs on one
    base URL)."""
    params = click.get_current_context().params
    if params.get("server"):
        return client.url
    data_dir = params.get("data_dir")
    if not isinstance(data_dir, Path):
        return client.url
    return read_endpoints(data_dir).key_service


def _check_key_service(given: str, client: ClusterClient) -> None:
    """Refuses a ``--key-service`` that is not the cluster's own.

    Raises InvalidArgument.
    """
    own = _own_key_service(client)
    if _service_identity(given, "--key-service") != _service_identity(own, "keyService"):
        raise InvalidArgument(
            f"--key-service {_clean(given)} is not this cluster's key service: kinko's "
            f"cluster wraps with the key service it runs in-process, at {_clean(own)}; "
            "another key service cannot be used (not supported)"
        )


@kms.command("enable")
@click.option(
    "--key",
    required=True,
    metavar="ROOT_KEY_ID_OR_ALIAS",
    help="The root key to wrap with (id or alias), e.g. kinko-cluster.",
)
@click.option(
    "--key-service",
    metavar="URL",
    help="The key service holding the key; must be the cluster's own (endpoints.json).",
)
@_wait_options
@remote
def kms_enable(
    *,
    client: ClusterClient,
    fmt: str,
    key: str,
    key_service: str | None,
    wait: bool,
    interval: float,
) -> None:
    """Encrypt the cluster with KMS v2 on a root key, then migrate everything stored.

    The new EncryptionConfiguration (KMS v2 first, the old providers kept for reads) is in
    force before this returns; writes go on during the migration. Administrator only.
    """
    if key_service is not None:
        _check_key_service(key_service, client)
    answer = client.kms_enable(key)
    if fmt == "table":
        already = "now " if answer.changed else "already "
        click.echo(
            f"KMS v2 provider {_clean(answer.provider)} {already}writes with root key "
            f"{_clean(answer.key)} (plugin {_clean(answer.socket)})"
        )
    _finish(
        client,
        answer.status,
        fmt=fmt,
        wait=wait,
        interval=interval,
        resources=(),
        answer=answer.doc,
    )


# --------------------------------------------------------------------------- migrate


def _plan_table(plan: MigrationPlan) -> Table:
    table = Table(title="Dry run: nothing was written", title_justify="left")
    for name in ("RESOURCE", "TOTAL", "CURRENT", "STALE", "WOULD REWRITE", "UNREADABLE"):
        table.add_column(name, justify="left" if name == "RESOURCE" else "right", no_wrap=True)
    for entry in plan.resources:
        table.add_row(
            _t(entry.resource),
            str(entry.total),
            "-" if entry.current is None else str(entry.current),
            str(entry.stale),
            str(entry.would_rewrite),
            str(entry.unreadable),
        )
    return table


@cluster.command("migrate")
@click.option(
    "--resource",
    "resources",
    multiple=True,
    metavar="RESOURCE",
    help="Only this resource, e.g. secrets (repeatable) [default: every encrypted one].",
)
@click.option("--dry-run", is_flag=True, help="Count what would be rewritten; write nothing.")
@_wait_options
@remote
def migrate(
    *,
    client: ClusterClient,
    fmt: str,
    resources: tuple[str, ...],
    dry_run: bool,
    wait: bool,
    interval: float,
) -> None:
    """Rewrite every stale object under the current encryption (online; a concurrent write
    wins). Administrator only."""
    if dry_run:
        plan = client.start_migration(resources, dry_run=True)
        if fmt == "table":
            _console().print(_plan_table(plan))
            for entry in plan.resources:
                if entry.unreadable_names:
                    names = ", ".join(_clean(name) for name in entry.unreadable_names)
                    click.echo(f"{_clean(entry.resource)}: unreadable, left alone: {names}")
        else:
            _echo_doc(plan.doc, fmt)
        return
    started = client.start_migration(resources)
    if fmt == "table":
        names = ", ".join(resources) if resources else "every encrypted resource"
        click.echo(f"Migration started: {_clean(names)}")
    _finish(
        client,
        started.status,
        fmt=fmt,
        wait=wait,
        interval=interval,
        resources=resources,
        answer=started.doc,
    )
