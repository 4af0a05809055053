"""Command line: `serve` (production), `backfill` and `replay` (recover events); `dev`, `send-test` and `tail` for
local use; `catalogue check` for maintainers (where PyYAML is installed, so not in the image)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import os
import secrets
import shlex
import sys
import urllib.error
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from bridge import __version__
from bridge.config import EventLoop, Settings
from bridge.errors import ConfigError

EXIT_CONFIG = 2
S = TypeVar("S")


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line()
    args = parser.parse_args(argv)

    if args.command == "serve":
        sys.exit(_serve(os.environ))
    if args.command == "backfill":
        sys.exit(_backfill(parser, args))
    if args.command == "replay":
        sys.exit(_replay(parser, args))
    if args.command == "dev":
        sys.exit(_dev())
    if args.command == "tail":
        sys.exit(_tail(args.type_pattern, args.from_beginning, args.count, args.show_data))
    if args.command == "catalogue":
        from pathlib import Path

        from bridge.dev.catalogue import check

        sys.exit(check(Path(args.openapi)))
    if args.probe:
        sys.exit(_probe(args.event_type, args.url, args.ready_url))
    sys.exit(_send_test(args.event_type, args.url))


def command_line() -> argparse.ArgumentParser:
    """The commands and their arguments (also what the chart's rendered commands are checked against)."""
    parser = argparse.ArgumentParser(prog="scalekit-bridge", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the bridge; configuration comes from the environment")
    recover = commands.add_parser(
        "backfill",
        help="publish a time window's events from Scalekit's Events API that Kafka does not hold yet",
        description="Publish every event of a time window that is not already in Kafka, as the record its "
        "webhook would have written (marked with ce_backfilledat). Configuration comes from the environment: "
        "SCALEKIT_ENVIRONMENT_URL, SCALEKIT_CLIENT_ID, SCALEKIT_CLIENT_SECRET and the KAFKA_*/BRIDGE_* settings.",
    )
    recover.add_argument(
        "--since",
        help="window start: an RFC 3339 time, or a duration back from now (90m, 2h, 3d); required without --resume",
    )
    recover.add_argument(
        "--resume",
        action="store_true",
        help="start where the last successful run's window ended (less BRIDGE_TIMESTAMP_TOLERANCE), recorded in "
        "BRIDGE_BACKFILL_STATE_TOPIC, or at --since when that is earlier or nothing is recorded (else --max-lookback)",
    )
    recover.add_argument(
        "--max-lookback",
        default="7d",
        help="never start further back than this before the window's end (default 7d; Scalekit does not document "
        "how long its Events API keeps events)",
    )
    recover.add_argument(
        "--until",
        help="window end, exclusive: an RFC 3339 time, or a duration back from now such as 25m, to stay behind "
        "Scalekit's retries (default: now)",
    )
    _filters(recover)
    recover.add_argument(
        "--include-dead-lettered",
        action="store_true",
        help="also write events whose only copy is a dead letter (after their cause is fixed; those replay cannot "
        "verify); one still not routable is dead-lettered again",
    )
    recover.add_argument(
        "--dry-run", action="store_true", help="print what would be published (type, id, topic, key); write nothing"
    )
    again = commands.add_parser(
        "replay",
        help="publish dead letters whose cause is fixed, verified again, as the webhook would write them now",
        description="Read the dead-letter topic over a window (when the dead letters were written), verify each "
        "one's kept webhook signature against SCALEKIT_WEBHOOK_SECRET (not its age), and publish those that are "
        "routable now (marked with ce_replayedat) unless their event is already in its topic. Configuration comes "
        "from the environment: SCALEKIT_WEBHOOK_SECRET and the KAFKA_*/BRIDGE_* settings.",
    )
    again.add_argument(
        "--since", required=True, help="window start: an RFC 3339 time, or a duration back from now (90m, 2h, 3d)"
    )
    again.add_argument("--until", help="window end, exclusive: an RFC 3339 time or a duration back (default: now)")
    _filters(again)
    again.add_argument("--reason", help="only dead letters whose reason contains this text")
    again.add_argument(
        "--max-age",
        default="7d",
        help="publish no event Scalekit signed longer ago than this (default 7d, the chart's topic retention: "
        "an older event's record may be gone from its topic, so that it is already there cannot be checked)",
    )
    again.add_argument(
        "--dry-run", action="store_true",
        help="print what would be published (type, id, topic, key) and what stays a dead letter; write nothing",
    )
    commands.add_parser("dev", help="run a local Kafka (unless KAFKA_BOOTSTRAP_SERVERS is set) and the bridge")
    send = commands.add_parser("send-test", help="sign a sample delivery with SCALEKIT_WEBHOOK_SECRET and POST it")
    send.add_argument("--type", required=True, dest="event_type", help="a documented Scalekit event type")
    send.add_argument("--url", help="webhook URL (default: this machine's BRIDGE_PORT and BRIDGE_WEBHOOK_PATH)")
    send.add_argument(
        "--probe", action="store_true",
        help="write nothing: sign with a random key and expect the bridge's 401 no_matching_signature (with "
        "--ready-url, first its readiness); needs no secret. The chart's helm test",
    )
    send.add_argument("--ready-url", help="with --probe: the bridge's /readyz, which must answer 200")
    follow = commands.add_parser(
        "tail",
        help="follow the bridge's topics and print each event on one line as it lands",
        description="Follow the topics under BRIDGE_TOPIC_PREFIX (and the dead-letter topic) on "
        "KAFKA_BOOTSTRAP_SERVERS; one line per event: time, type, key, id (and with --show-data a short excerpt of "
        "its data, which is personal data for many types).",
    )
    follow.add_argument("--type", default="*", dest="type_pattern", metavar="PATTERN",
                        help="only event types matching this pattern, e.g. 'organization.directory.*' (default: all)")
    follow.add_argument("--from-beginning", action="store_true", help="print what the topics already hold first")
    follow.add_argument("--count", type=int, help="exit after printing this many events")
    follow.add_argument("--show-data", action="store_true",
                        help="print a short excerpt of each event's data (personal data: off unless asked)")
    if development_tools():
        catalogue = commands.add_parser(
            "catalogue", help="compare this release's event types with Scalekit's published catalogue"
        ).add_subparsers(dest="action", required=True)
        compare = catalogue.add_parser(
            "check",
            help="report where Scalekit's OpenAPI document and this release's schemas part (exit 1), 0 if they agree",
            description="Reads the OpenAPI document of Scalekit's API reference (YAML or JSON) and reports types "
            "only one side knows, fields Scalekit requires that our schemas do not declare, and organizations its "
            "examples carry where our key rule does not look. Exit 0: they agree; 1: they differ; 2: unreadable.",
        )
        compare.add_argument("openapi", metavar="OPENAPI-FILE", help="Scalekit's OpenAPI document, downloaded")
    return parser


def development_tools() -> bool:
    """Whether the maintainers' commands can run here: they need PyYAML, which the image leaves out."""
    return importlib.util.find_spec("yaml") is not None


def _filters(command: argparse.ArgumentParser) -> None:
    """The event filters backfill and replay share."""
    command.add_argument(
        "--type", action="append", default=[], dest="types", metavar="TYPE", help="only this event type (repeatable)"
    )
    command.add_argument("--organization", help="only this organization's events")


def _settings(env: Mapping[str, str], read: Callable[[Mapping[str, str]], S]) -> S | None:
    """A command's settings read from `env`; None, having said why, when they are refused."""
    try:
        return read(env)
    except ConfigError as exc:
        print(f"scalekit-bridge: configuration error: {exc}", file=sys.stderr)
        return None


# Kafka's time index counts milliseconds from 1970; a window cannot start before it (or a margin before it).
_EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)


def _check_window(parser: argparse.ArgumentParser, start: datetime, end: datetime) -> None:
    if start < _EARLIEST:
        parser.error(f"--since ({start.isoformat()}) must be after {_EARLIEST.date().isoformat()}: Kafka keeps no "
                     "earlier time")
    if start >= end:
        parser.error(f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})")


def _serve(env: os._Environ[str] | dict[str, str]) -> int:
    settings = _settings(env, Settings.from_env)
    if settings is None:
        return EXIT_CONFIG
    from bridge import logs
    from bridge.app import serve

    logs.configure(settings.log_level, settings.log_format)
    with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
        runner.run(serve(settings))
    return 0


def _loop_factory(event_loop: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (libuv; less CPU per request), or asyncio's own (None)."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def _backfill(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from bridge import backfill, logs
    from bridge.config import BackfillSettings
    from bridge.eventsapi import EventQuery
    from bridge.window import parse_duration, parse_moment

    now = datetime.now(UTC)
    if args.since is None and not args.resume:
        parser.error("--since is required (or --resume, to start where the last run ended)")
    if args.resume and args.organization:
        parser.error("--resume covers whole environments; --organization runs record no window end to resume from")
    try:
        end = parse_moment(args.until, now) if args.until else now
        lookback = parse_duration(args.max_lookback)
        if not lookback:
            raise ValueError("--max-lookback must be longer than 0")
        floor = end - lookback  # also where a resumed run may start at the earliest
        start = parse_moment(args.since, now) if args.since else floor
    except OverflowError:
        parser.error(f"--max-lookback {args.max_lookback} reaches back before the year 1")
    except ValueError as exc:
        parser.error(str(exc))
    _check_window(parser, start, end)
    settings = _settings(os.environ, BackfillSettings.from_env)
    if settings is None:
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    query = EventQuery(start=start, end=end, types=tuple(args.types), organization_id=args.organization)
    request = backfill.Request(
        query=query,
        dry_run=args.dry_run,
        resume=args.resume,
        since_given=args.since is not None,
        max_lookback=lookback,
        include_dead_lettered=args.include_dead_lettered,
    )
    return backfill.main(settings, request)


def _replay(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from bridge import logs, replay
    from bridge.config import ReplaySettings
    from bridge.window import parse_duration, parse_moment

    now = datetime.now(UTC)
    try:
        start = parse_moment(args.since, now)
        end = parse_moment(args.until, now) if args.until else now
        max_age = parse_duration(args.max_age)
    except ValueError as exc:
        parser.error(str(exc))
    _check_window(parser, start, end)
    settings = _settings(os.environ, ReplaySettings.from_env)
    if settings is None:
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    selection = replay.Selection(
        start=start, end=end, types=tuple(args.types), organization_id=args.organization, reason=args.reason,
        max_age=max_age,
    )
    return replay.main(settings, replay.Request(selection=selection, dry_run=args.dry_run))


def _dev() -> int:
    from bridge.dev.kafka import KAFKA_VERSION, LocalKafka, LocalKafkaError

    env = dict(os.environ)
    env.setdefault("BRIDGE_LOG_FORMAT", "text")
    env.setdefault("BRIDGE_HOST", "127.0.0.1")
    # Only a secret we generated here may be printed; one the user supplied may be real.
    generated = not env.get("SCALEKIT_WEBHOOK_SECRET")
    if generated:
        env["SCALEKIT_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    shown_secret = env["SCALEKIT_WEBHOOK_SECRET"] if generated else "$SCALEKIT_WEBHOOK_SECRET"
    kafka = None
    try:
        if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
            print(f"Starting a local Apache Kafka {KAFKA_VERSION} (KRaft, one node)...", flush=True)
            kafka = LocalKafka()
            env["KAFKA_BOOTSTRAP_SERVERS"] = kafka.start()
        settings = _settings(env, Settings.from_env)
        if settings is None:
            return EXIT_CONFIG
        url = f"http://127.0.0.1:{settings.port}{settings.webhook_path}"
        print(
            "\n".join(
                [
                    "",
                    f"  Kafka:           {env['KAFKA_BOOTSTRAP_SERVERS']}",
                    f"  Webhook URL:     {url}",
                    f"  Admin:           http://127.0.0.1:{settings.admin_port}/readyz  /metrics",
                    f"  Signing secret:  {shown_secret}   "
                    + ("(generated, development only)" if generated else "(yours, not shown)"),
                    "",
                    "  Send a test event from another terminal (in this directory):",
                    (
                        f"    SCALEKIT_WEBHOOK_SECRET={shown_secret} "
                        f"{_this_command()} send-test --type organization.directory.user_created --url {url}"
                    ),
                    "",
                    "  Watch events land in Kafka, one line each (another terminal):",
                    f"    KAFKA_BOOTSTRAP_SERVERS={env['KAFKA_BOOTSTRAP_SERVERS']} {_this_command()} tail",
                    "",
                    "  Ctrl-C stops the bridge, then Kafka.",
                    "",
                ]
            ),
            flush=True,
        )
        return _serve(env)
    except LocalKafkaError as exc:
        print(f"scalekit-bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if kafka is not None:
            print("Stopping the local Kafka...", flush=True)
            kafka.stop()


def _tail(type_pattern: str, from_beginning: bool, count: int | None, show_data: bool) -> int:
    from bridge.config import KafkaSettings, topic_names_from_env
    from bridge.dev.tail import Tail, follow

    try:
        kafka = KafkaSettings.from_env()
        prefix, deadletter_topic = topic_names_from_env()
    except ConfigError as exc:
        print(f"scalekit-bridge: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    tail = Tail(kafka, prefix, deadletter_topic, type_pattern, from_beginning, show_data)
    try:
        asyncio.run(follow(tail, sys.stdout, count=count))
    except KeyboardInterrupt:
        return 130
    return 0


def _this_command() -> str:
    """How to run this same program again from the current directory, as a shell word or two.

    `make run` starts `.venv/bin/scalekit-bridge`, which is not on PATH: print that path, not the bare name.
    """
    program = sys.argv[0]
    if os.path.basename(program) == "scalekit-bridge" and os.path.isfile(program):
        path = os.path.relpath(program)
        return shlex.quote(path if os.sep in path else "./" + path)
    return f"{shlex.quote(os.path.relpath(sys.executable))} -m bridge"


def _probe(event_type: str, url: str | None, ready_url: str | None) -> int:
    from bridge.dev.samples import sample_types
    from bridge.dev.sendtest import probe

    if event_type not in sample_types() or url is None:
        print("scalekit-bridge: --probe needs --url and a documented --type", file=sys.stderr)
        return EXIT_CONFIG
    try:
        checks = probe(url, ready_url, event_type)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"scalekit-bridge: could not reach the bridge: {exc}", file=sys.stderr)
        return 1
    for passed, seen in checks:
        print(f"{'ok  ' if passed else 'FAIL'} {seen}")
    return 0 if all(passed for passed, _ in checks) else 1


def _send_test(event_type: str, url: str | None) -> int:
    from bridge.dev.samples import sample_types
    from bridge.dev.sendtest import send

    if event_type not in sample_types():
        print(
            f"scalekit-bridge: unknown event type {event_type!r}; one of:\n  " + "\n  ".join(sample_types()),
            file=sys.stderr,
        )
        return EXIT_CONFIG
    settings = _settings(os.environ, Settings.from_env)
    if settings is None:
        return EXIT_CONFIG
    target = url or f"http://127.0.0.1:{settings.port}{settings.webhook_path}"
    try:
        status, text = send(target, settings.signing_keys[0], event_type)
    except (urllib.error.URLError, OSError) as exc:
        print(f"scalekit-bridge: could not reach {target}: {exc}", file=sys.stderr)
        return 1
    print(f"{status} {text}")
    return 0 if 200 <= status < 300 else 1
