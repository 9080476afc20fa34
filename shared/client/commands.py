"""The client subcommands' arguments (argparse) and what runs each: the API from ``config``, failures
as exit statuses (``errors``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from shared.client import batches, predictions, webhooks
from shared.client.config import DEFAULT_URL, resolve
from shared.client.display import Display
from shared.client.errors import EXIT_ERROR, ClientError
from shared.client.http import KilnClient
from shared.client.inputs import positive_int

Handler = Callable[[argparse.Namespace, KilnClient, Display], int]
Commands = argparse._SubParsersAction  # the type of add_subparsers()' answer

GROUPS = frozenset({"run", "predictions", "batch", "webhooks"})

EXIT_STATUS = """\
exit status:
  0    every prediction (or batch item) succeeded; a listing or lookup was answered
  1    a prediction or batch item failed, was canceled or aborted, or was refused
  2    usage, configuration, connection, authentication or HTTP errors (the API's detail is shown)
  130  interrupted (Ctrl-C); the prediction or batch goes on
"""

HELP = f"""\
client commands (run, predictions, batch, webhooks) speak HTTP to a Kiln API: --url and --token,
else KILN_URL and KILN_TOKEN, else url and token in $XDG_CONFIG_HOME/kiln/config.toml
(~/.config/kiln/config.toml); the URL defaults to {DEFAULT_URL}. Progress bars show only when
stdout is a terminal; stdout carries paths, ids and JSON.

client commands' {EXIT_STATUS}"""


def _connection() -> argparse.ArgumentParser:
    """--url and --token, on every client command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the API's base URL (else KILN_URL, the config file, then the local stack)")
    common.add_argument("--token", help="an API token (else KILN_TOKEN or the config file; those keep it out of ps)")
    return common


class _Builder:
    """Adds client commands, each with --url, --token and the exit statuses in its help."""

    def __init__(self) -> None:
        self.common = _connection()

    def command(self, commands: Commands[argparse.ArgumentParser], name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[self.common],
            help=text,
            description=text,
            epilog=EXIT_STATUS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def with_id(self, commands: Commands[argparse.ArgumentParser], actions: dict[str, tuple[str, Handler]]) -> None:
        """Commands that take one object's ID."""
        for name, (text, handler) in actions.items():
            command = self.command(commands, name, text)
            command.add_argument("id", metavar="ID")
            command.set_defaults(handler=handler)


def add_commands(groups: Commands[argparse.ArgumentParser]) -> None:
    """The client commands, beside the administration ones."""
    build = _Builder()
    run = build.command(groups, "run", "run a model: create a prediction, follow it, download its outputs")
    run.add_argument("model", metavar="MODEL", help="owner/name or owner/name:version (e.g. kiln/sd2-depth2img)")
    run.add_argument(
        "-i",
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an input; VALUE is JSON when it parses (4, true, [1, 2], '\"text\"'), else text; "
        "KEY=@path uploads the file (Files API) and passes its URL",
    )
    run.add_argument("-o", "--output-dir", type=Path, default=Path("."), help="where outputs are saved (default: .)")
    run.set_defaults(handler=lambda a, c, d: predictions.run_model(c, d, a.model, a.inputs, a.output_dir))
    _predictions(build, groups.add_parser("predictions", help="list, show, cancel and delete predictions"))
    _batches(build, groups.add_parser("batch", help="many predictions from a JSONL file, as one batch"))
    _webhooks(build, groups.add_parser("webhooks", help="failed webhook deliveries, and sending them again"))


def _predictions(build: _Builder, parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True)
    listing = build.command(commands, "list", "the newest predictions: id, status, model, created_at")
    listing.add_argument("--limit", type=positive_int, default=20, help="at most this many (default: 20)")
    listing.add_argument("--json", action="store_true", help="each prediction as a JSON line")
    listing.set_defaults(handler=lambda a, c, d: predictions.list_predictions(c, a.limit, a.json))
    show = predictions.show_object
    build.with_id(
        commands,
        {
            "get": ("print a prediction (JSON)", lambda a, c, d: show(c.prediction(a.id))),
            "cancel": ("cancel a prediction; print it", lambda a, c, d: show(c.cancel_prediction(a.id))),
            "delete": (
                "delete an ended prediction and its files; print it (a running one: cancel it first)",
                lambda a, c, d: show(c.delete_prediction(a.id)),
            ),
        },
    )


def _batches(build: _Builder, parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True)
    submit = build.command(
        commands, "submit", "upload a JSONL file (a create body per line), make a batch of it, print its id"
    )
    submit.add_argument("file", metavar="FILE.jsonl", type=Path)
    submit.add_argument(
        "--model", help="owner/name[:version] for lines that name none; a line may then be just the input object"
    )
    submit.add_argument("--wait", action="store_true", help="follow the batch until it ends (a progress bar)")
    submit.add_argument(
        "--results",
        type=Path,
        metavar="OUT.jsonl",
        help="wait, then write the results: a JSON line per input line, in order (id, status, output, error, metrics)",
    )
    submit.set_defaults(handler=lambda a, c, d: batches.submit(c, d, a.file, a.model, a.wait, a.results))
    show = predictions.show_object
    build.with_id(
        commands,
        {
            "get": ("print a batch (JSON): status and counts", lambda a, c, d: show(c.batch(a.id))),
            "cancel": ("cancel every unfinished item; print the batch", lambda a, c, d: show(c.cancel_batch(a.id))),
        },
    )


def _webhooks(build: _Builder, parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True)
    since = "only those since: an ISO 8601 time (no offset: UTC) or a duration back (90m, 2h, 7d)"
    failed = build.command(commands, "failed", "webhook deliveries that failed, one per line")
    failed.add_argument("--since", help=since)
    failed.add_argument("--json", action="store_true", help="each delivery as a JSON line")
    failed.set_defaults(handler=lambda a, c, d: webhooks.list_failed(c, a.since, a.json))
    retry = build.command(commands, "retry", "send a webhook delivery again, or every failed one")
    retry.add_argument("webhook_id", metavar="WEBHOOK_ID", nargs="?", help="the delivery (its webhook-id header)")
    retry.add_argument("--all-failed", action="store_true", help="every failed delivery (with --since: since then)")
    retry.add_argument("--since", help=since)
    retry.set_defaults(handler=lambda a, c, d: webhooks.retry(c, a.webhook_id, a.all_failed, a.since))


def main(
    args: argparse.Namespace,
    env: Mapping[str, str] = os.environ,
    transport: httpx.BaseTransport | None = None,
    display: Display | None = None,
) -> int:
    """Run the parsed client command; what stops it is printed (``kiln: ...``) as exit status 2."""
    try:
        config = resolve(args.url, args.token, env)
        with KilnClient(config, transport) as client:
            handler: Handler = args.handler
            return handler(args, client, display or Display())
    except (ClientError, OSError) as exc:  # OSError: an output or results file that cannot be written
        print(f"kiln: {exc}", file=sys.stderr)
        return EXIT_ERROR
