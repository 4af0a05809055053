"""A local Scalekit that the unmodified scalekit-sdk-python talks to: token endpoint and Events API.

One TLS port, as the SDK expects (it derives the gRPC target from the environment
URL's host:port): connections that negotiate ALPN `h2` are passed to a gRPC
server running the SDK's own `EventsService` servicer base, `http/1.1` ones to the
OAuth client-credentials endpoint. The certificate comes from `trustme`; a client
trusts it through `REQUESTS_CA_BUNDLE` and `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import cycle
from typing import Any
from urllib.parse import parse_qs

import grpc
import trustme
from google.protobuf.timestamp_pb2 import Timestamp
from scalekit.v1.events import events_pb2, events_pb2_grpc

from bridge.dev.samples import sample, sample_types
from bridge.envelope import ORGANIZATION_PATHS

# The API's documented paging: 10 by default, at most 100.
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100


@dataclass
class Seen:
    """What the fake was asked, for tests that check the client sent its filter."""

    token_requests: int = 0
    page_requests: list[events_pb2.ListEventsPaginatedRequest] = field(default_factory=list)


class _EventsService(events_pb2_grpc.EventsServiceServicer):
    def __init__(self, scalekit: FakeScalekit) -> None:
        self._scalekit = scalekit
        self._pages: dict[str, tuple[bytes, int]] = {}
        self._lock = threading.Lock()

    def ListEventsPaginated(self, request, context):  # noqa: N802 - the servicer's own name
        scalekit = self._scalekit
        bearers = [value for key, value in context.invocation_metadata() if key == "authorization"]
        if not any(value == f"Bearer {token}" for value in bearers for token in scalekit.tokens):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing access token")
        scalekit.seen.page_requests.append(request)
        if request.page_size > MAX_PAGE_SIZE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be at most {MAX_PAGE_SIZE}")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, scalekit.page_limit)
        query = request.filter.SerializeToString(deterministic=True)
        offset = 0
        if request.page_token:
            with self._lock:
                remembered = self._pages.get(request.page_token)
            if remembered is None or remembered[0] != query:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown page token for this filter")
            offset = remembered[1]
        matching = scalekit.matching(request.filter)
        page = matching[offset : offset + size]
        next_token = ""
        if offset + size < len(matching):
            next_token = secrets.token_urlsafe(12)
            with self._lock:
                self._pages[next_token] = (query, offset + size)
        return events_pb2.ListEventsPaginatedResponse(events=page, next_page_token=next_token)


def _matches(event: events_pb2.ScalekitEvent, wanted: events_pb2.EventFilter) -> bool:
    if wanted.event_types and event.type not in wanted.event_types:
        return False
    if wanted.organization_id and event.organization_id != wanted.organization_id:
        return False
    occurred = event.occurred_at.ToNanoseconds()
    if wanted.HasField("start_time") and occurred < wanted.start_time.ToNanoseconds():
        return False
    return not (wanted.HasField("end_time") and occurred >= wanted.end_time.ToNanoseconds())


class FakeScalekit:
    """Start with `start()`; `env()` is what a backfill process needs to use it."""

    def __init__(
        self, *, client_id: str = "skc_test", client_secret: str | None = None, page_limit: int = MAX_PAGE_SIZE
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret or "test_" + secrets.token_urlsafe(24)
        self.page_limit = page_limit
        self.tokens: set[str] = set()
        self.seen = Seen()
        self._events: list[events_pb2.ScalekitEvent] = []
        self._answers: dict[bytes, list[events_pb2.ScalekitEvent]] = {}
        self._lock = threading.Lock()
        self._ca = trustme.CA()
        self._files = tempfile.TemporaryDirectory(prefix="fake-scalekit-")
        self.ca_file = f"{self._files.name}/ca.pem"
        self._ca.cert_pem.write_to_path(self.ca_file)
        self.port = 0
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            "SCALEKIT_ENVIRONMENT_URL": self.url,
            "SCALEKIT_CLIENT_ID": self.client_id,
            "SCALEKIT_CLIENT_SECRET": self.client_secret,
            "REQUESTS_CA_BUNDLE": self.ca_file,
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": self.ca_file,
            **overrides,
        }

    # Events

    def add(self, envelope: dict[str, Any]) -> events_pb2.ScalekitEvent:
        """Keep a webhook-shaped envelope as the API's `ScalekitEvent`."""
        fields = ("spec_version", "id", "type", "environment_id", "organization_id", "object", "display_name")
        event = events_pb2.ScalekitEvent(**{name: envelope[name] for name in fields if name in envelope})
        event.occurred_at.FromJsonString(envelope["occurred_at"])
        if "data" in envelope:
            event.data.update(envelope["data"])
        with self._lock:
            self._events.append(event)
            self._answers.clear()
        return event

    def remove(self, event_id: str) -> None:
        """Forget an event (as if it had never been kept)."""
        with self._lock:
            self._events = [event for event in self._events if event.id != event_id]
            self._answers.clear()

    def matching(self, wanted: events_pb2.EventFilter) -> list[events_pb2.ScalekitEvent]:
        """The events a filter selects, newest first (remembered until an event is added)."""
        query = wanted.SerializeToString(deterministic=True)
        with self._lock:
            if query not in self._answers:
                newest_first = sorted(
                    self._events, key=lambda event: (event.occurred_at.ToNanoseconds(), event.id), reverse=True
                )
                self._answers[query] = [event for event in newest_first if _matches(event, wanted)]
            return self._answers[query]

    # Serving

    def start(self) -> str:
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fake-scalekit-grpc")
        self._grpc = grpc.server(executor)
        events_pb2_grpc.add_EventsServiceServicer_to_server(_EventsService(self), self._grpc)
        grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        threading.Thread(target=self._http.serve_forever, name="fake-scalekit-http", daemon=True).start()

        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(tls)
        tls.set_alpn_protocols(["h2", "http/1.1"])
        routes = {"h2": grpc_port, "http/1.1": self._http.server_address[1]}
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._front, args=(tls, routes, ready), name="fake-scalekit-tls", daemon=True).start()
        ready.wait(10)
        return self.url

    def _front(self, tls: ssl.SSLContext, routes: dict[str, int], ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)

        async def route(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol() or "http/1.1"
            try:
                backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", routes[chosen])
            except (KeyError, OSError):
                writer.close()
                return
            await asyncio.gather(_pipe(reader, backend_writer), _pipe(backend_reader, writer))

        server = loop.run_until_complete(asyncio.start_server(route, "127.0.0.1", 0, ssl=tls))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        server.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._http is not None:
            self._http.shutdown()
        if self._grpc is not None:
            self._grpc.stop(grace=None)
        self._files.cleanup()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _token_handler(scalekit: FakeScalekit) -> type[BaseHTTPRequestHandler]:
    class TokenEndpoint(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's naming
            if self.path != "/oauth/token":
                self._answer(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            form = {key: values[0] for key, values in parse_qs(self.rfile.read(length).decode()).items()}
            scalekit.seen.token_requests += 1
            if (
                form.get("grant_type") != "client_credentials"
                or form.get("client_id") != scalekit.client_id
                or not secrets.compare_digest(form.get("client_secret", ""), scalekit.client_secret)
            ):
                self._answer(401, {"error": "invalid_client", "error_description": "client authentication failed"})
                return
            token = secrets.token_urlsafe(24)
            scalekit.tokens.add(token)
            self._answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet in tests
            pass

    return TokenEndpoint


def sample_events(
    count: int,
    *,
    start: datetime,
    step: timedelta = timedelta(seconds=7),
    organizations: Iterable[str] = ("org_alpha", "org_beta", "org_gamma"),
    types: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """`count` webhook-shaped envelopes from the packaged samples: distinct ids, organizations and times."""
    kinds = cycle(list(types) if types is not None else sample_types())
    orgs = cycle(list(organizations))
    made = []
    for position in range(count):
        event_type = next(kinds)
        envelope = sample(event_type)
        envelope["id"] = f"evt_{secrets.token_hex(8)}"
        envelope["occurred_at"] = _rfc3339(start + step * position)
        organization = next(orgs)
        for path in ORGANIZATION_PATHS:  # wherever the type keeps its organization, as the key rules find it
            node = envelope
            for name in path[:-1]:
                node = node.get(name) if isinstance(node, dict) else None
            if isinstance(node, dict) and path[-1] in node:
                node[path[-1]] = organization
        made.append(envelope)
    return made


def _rfc3339(moment: datetime) -> str:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp.ToJsonString()
