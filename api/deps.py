"""FastAPI dependencies and request headers, as ``Annotated`` aliases routes can declare.

All are ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, and a thread hop
per dependency cost more than the checks themselves on every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Header, Request

from api.auth import Caller
from api.errors import DEFERRED_AUTH_STATE_KEY, ProblemError
from api.ratelimit import STATE_KEY as RATELIMIT_STATE_KEY
from api.ratelimit import Decision
from api.services import Services
from shared.predictions.deadlines import DURATION_PATTERN
from shared.predictions.store import PredictionStore, RateLimited, TokenCheck, TokenRefused
from shared.scheduling.queues import PRIORITIES, Priority
from shared.settings import Settings

CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_settings_dep(services: Annotated[Services, Depends(get_services)]) -> Settings:
    return services.settings


async def get_store(services: Annotated[Services, Depends(get_services)]) -> PredictionStore:
    return services.store


def _token_in(header: str) -> str | None:
    """The token of an ``Authorization`` header, ``Bearer <token>`` or Replicate's older ``Token <token>``;
    None for a malformed one."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if token and scheme.lower() in {"bearer", "token"} else None


def _bearer_token(request: Request) -> str | None:
    """The request's token, None without credentials; 401 for malformed ones."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    token = _token_in(header)
    if token is None:
        raise ProblemError(401, "malformed credentials: send 'Authorization: Bearer <token>'", headers=CHALLENGE)
    return token


async def optional_caller(request: Request, services: Annotated[Services, Depends(get_services)]) -> Caller | None:
    """The caller of the request's token, None without credentials; 401 for an unknown or revoked token."""
    token = _bearer_token(request)
    if token is None:
        return None
    caller = await services.authenticator.caller(token)
    if caller is None:
        raise ProblemError(401, "invalid token (unknown or revoked)", headers=CHALLENGE)
    return caller


async def optional_tenant(caller: Annotated[Caller | None, Depends(optional_caller)]) -> str | None:
    return caller.tenant if caller else None


async def current_caller(request: Request, services: Annotated[Services, Depends(get_services)]) -> Caller:
    """The authenticated caller, within its rate limit (429 with ``Retry-After`` beyond it): the token and
    the rate limit checked in one round trip. The answer, whatever it is, carries the ``ratelimit-*``
    headers (``api.ratelimit.RateLimitHeaders``)."""
    token = _bearer_token(request)
    if token is None:
        raise ProblemError(401, "missing credentials: send 'Authorization: Bearer <token>'", headers=CHALLENGE)
    refuse_spent(request, services, token)
    caller, decision = await _caller_within_limit(services, token)
    apply_rate_limit(request, caller, decision, token)
    return caller


def refuse_spent(request: Request, services: Services, token: str) -> None:
    """A 429 at once for a token whose bucket this process found spent, until it refills
    (``api.ratelimit.SpentBuckets``)."""
    found = services.spent.refusal(token)
    if found is not None:
        spent, decision = found
        setattr(request.state, RATELIMIT_STATE_KEY, decision.headers())
        raise _rate_limited(spent.rate_per_s, spent.burst, decision)


def refuse_if_spent(request: Request) -> None:
    """``refuse_spent`` for the request's token, if it sent one (a malformed one is answered later)."""
    token = _token_in(request.headers.get("authorization", ""))
    if token is not None:
        refuse_spent(request, request.app.state.services, token)


async def _caller_within_limit(services: Services, token: str) -> tuple[Caller, Decision]:
    """The token's caller and one request taken from its rate limit, in one round trip; 401 for a token
    unknown or revoked."""
    found = await services.authenticator.caller_within_limit(token)
    if found is None:
        raise ProblemError(401, "invalid token (unknown or revoked)", headers=CHALLENGE)
    return found


class DeferredAuth:
    """A single create's token check left to its store (``api.auth``): the token was seen valid by this
    process, and the create's store script checks it is still valid and takes one request from its rate
    limit, before it writes anything (``TokenCheck``). Whatever answers the request before that store (a
    422 for its body, a 404, a create that goes to an intake thread, a waited one) checks the token first
    (``settle``), so that a revoked token or a spent rate limit still answers 401 or 429 before anything
    else, as ``current_caller`` does. Kept on the request's state for the error handlers
    (``api.errors.DEFERRED_AUTH_STATE_KEY``).

    It keeps the token and the answer's ``ratelimit-*`` headers (``RateLimitHeaders`` reads them from the
    state), not the request: the request's state holding it, it holding the request was a reference cycle
    that left each create's request, scope, body and closures to the cyclic garbage collector (~100 µs of a
    create's CPU, and a full collection's pause every few thousand creates)."""

    def __init__(self, request: Request, services: Services, caller: Caller, check: TokenCheck, token: str) -> None:
        self.token = token
        self.services = services
        self.caller = caller
        self.check = check
        self.pending = True
        self.headers: dict[str, str] = {}  # filled once decided
        setattr(request.state, RATELIMIT_STATE_KEY, self.headers)
        setattr(request.state, DEFERRED_AUTH_STATE_KEY, self)

    async def settle(self) -> None:
        """Check the token now, as ``current_caller`` does (401, 429), unless it was already."""
        if self.pending:
            self.pending = False
            caller, decision = await _caller_within_limit(self.services, self.token)
            self._apply(caller, decision)

    def take_over(self) -> TokenCheck:
        """The check, for the store that makes it (and answers for it: ``stored``, ``refused``)."""
        self.pending = False
        return self.check

    def stored(self, tokens_left: float) -> None:
        """The store checked the token and took one request: the answer's ``ratelimit-*`` headers."""
        self._decided(True, tokens_left)

    def refused(self, exc: TokenRefused | RateLimited) -> NoReturn:
        """The store found the token revoked (401, and forgotten) or at its rate limit (429)."""
        if isinstance(exc, TokenRefused):
            self.services.authenticator.forget(self.check.digest)
            raise ProblemError(401, "invalid token (unknown or revoked)", headers=CHALLENGE) from None
        self._decided(False, exc.tokens_left)
        raise AssertionError("not reached: a refused decision raises")  # pragma: no cover

    def _decided(self, allowed: bool, tokens_left: float) -> None:
        caller = self.caller
        self._apply(caller, Decision.of(allowed, tokens_left, 1, caller.rate_limit_per_s, caller.rate_limit_burst))

    def _apply(self, caller: Caller, decision: Decision) -> None:
        self.headers.clear()
        self.headers.update(decision.headers())
        self.services.spent.note(self.token, decision, caller.rate_limit_per_s, caller.rate_limit_burst)
        _refuse_over_limit(caller, decision)


async def take_rate_limit(request: Request, services: Services, caller: Caller) -> None:
    """One request off the caller's rate limit, or a 429 with ``Retry-After``."""
    decision = await services.rate_limiter.take(caller.tenant, caller.rate_limit_per_s, caller.rate_limit_burst)
    apply_rate_limit(request, caller, decision)


def apply_rate_limit(request: Request, caller: Caller, decision: Decision, token: str | None = None) -> None:
    """Leave the ``ratelimit-*`` headers for the answer; a 429 with ``Retry-After`` when not allowed (and
    the token's bucket remembered as spent, when it is)."""
    setattr(request.state, RATELIMIT_STATE_KEY, decision.headers())
    if not decision.allowed and (token := token or _bearer_token(request)) is not None:
        services: Services = request.app.state.services
        services.spent.note(token, decision, caller.rate_limit_per_s, caller.rate_limit_burst)
    _refuse_over_limit(caller, decision)


def _refuse_over_limit(caller: Caller, decision: Decision) -> None:
    """A 429 with ``Retry-After`` when ``decision`` did not allow the request."""
    if not decision.allowed:
        raise _rate_limited(caller.rate_limit_per_s, caller.rate_limit_burst, decision)


def _rate_limited(rate_per_s: float, burst: int, decision: Decision) -> ProblemError:
    return ProblemError(
        429,
        f"rate limit exceeded: {rate_per_s:g} requests per second with bursts of {burst}",
        headers=decision.headers() | {"Retry-After": str(decision.retry_after_s)},
    )


async def current_tenant(caller: Annotated[Caller, Depends(current_caller)]) -> str:
    return caller.tenant


async def base_url(request: Request, settings: Annotated[Settings, Depends(get_settings_dep)]) -> str:
    return link_base(request, settings)


def link_base(request: Request, settings: Settings) -> str:
    """Absolute base URL for links in responses: the configured public URL, else the request's
    (Starlette's ``request.base_url``, which cost a create more than its own checks: the few recent ones
    are remembered by what they are made of)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    scope = request.scope
    server = scope.get("server")
    key = (
        scope.get("scheme", "http"),
        request.headers.get("host"),
        tuple(server) if server else None,
        scope.get("app_root_path", scope.get("root_path", "")),
    )
    found = _BASES.get(key)
    if found is None:
        if len(_BASES) >= _BASES_KEPT:  # Host headers are the client's: keep only a few
            _BASES.clear()
        found = _BASES[key] = str(request.base_url).rstrip("/")
    return found


_BASES: dict[tuple[Any, ...], str] = {}
_BASES_KEPT = 64


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[PredictionStore, Depends(get_store)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]
CurrentTenant = Annotated[str, Depends(current_tenant)]
OptionalCaller = Annotated[Caller | None, Depends(optional_caller)]
OptionalTenant = Annotated[str | None, Depends(optional_tenant)]
BaseURL = Annotated[str, Depends(base_url)]

PREFER_DESCRIPTION = "`wait` or `wait=N` (1-60 s): answer when finished."
PRIORITY_HEADER_DESCRIPTION = (
    "Kiln extension: `normal` or `low` (any case), for clients that cannot add the body's `priority` field, "
    "which wins when both are given. A low prediction starts only when no normal one of its model family waits."
)
CANCEL_AFTER_DESCRIPTION = (
    "A duration (`30s`, `5m`, `1h30m`): not started by then, the prediction ends `aborted`; still running, `canceled`."
)


def single_header(request: Request, name: str) -> str | None:
    """A header that takes one value (``Idempotency-Key``, ``Cancel-After``, ``Kiln-Priority``); a 400 naming
    it when sent more than once, which of its values was meant being unknown."""
    value = request.headers.get(name)
    if value is not None and len(request.headers.getlist(name)) > 1:
        raise ProblemError(400, f"{name}: sent more than once; send it once")
    return value


def prefer_of(request: Request) -> str | None:
    """Every ``Prefer`` header, as the one list RFC 7240 makes of them (the first of a preference counts)."""
    value = request.headers.get("prefer")
    if value is not None and len(values := request.headers.getlist("prefer")) > 1:
        value = ", ".join(values)
    return value


# The ``Header`` parameters of these dependencies document the headers (OpenAPI); each is read with its repeats.
async def _prefer(
    request: Request, prefer: Annotated[str | None, Header(description=PREFER_DESCRIPTION)] = None
) -> str | None:
    return prefer_of(request)


async def _idempotency_key(
    request: Request, idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None
) -> str | None:
    return single_header(request, "Idempotency-Key")


PreferHeader = Annotated[str | None, Depends(_prefer)]
IdempotencyKey = Annotated[str | None, Depends(_idempotency_key)]


async def header_priority(
    request: Request,
    kiln_priority: Annotated[str | None, Header(alias="Kiln-Priority", description=PRIORITY_HEADER_DESCRIPTION)] = None,
) -> Priority | None:
    return priority_of(request)


def priority_of(request: Request) -> Priority | None:
    """The ``Kiln-Priority`` header's priority; a 400 naming the header for any other value, or when it is
    sent more than once."""
    kiln_priority = single_header(request, "Kiln-Priority")
    if kiln_priority is None:
        return None
    found = kiln_priority.strip().lower()
    for priority in PRIORITIES:
        if found == priority:
            return priority
    raise ProblemError(
        400, f"Kiln-Priority: {kiln_priority[:40]!r} is not a priority; send one of {', '.join(PRIORITIES)}"
    )


HeaderPriority = Annotated[Priority | None, Depends(header_priority)]


async def _cancel_after(
    request: Request,
    cancel_after: Annotated[
        str | None,
        Header(
            alias="Cancel-After",
            description=CANCEL_AFTER_DESCRIPTION,
            # Documented only: a bad value is a 400 naming the header (api.intake.submission.deadline_after).
            json_schema_extra={"pattern": DURATION_PATTERN},
        ),
    ] = None,
) -> str | None:
    return single_header(request, "Cancel-After")


CancelAfter = Annotated[str | None, Depends(_cancel_after)]


@dataclass(frozen=True)
class CreateRequest:
    """What a single create needs besides its body: the caller (authenticated and within its rate limit,
    or, with ``auth``, seen valid and left to check: ``DeferredAuth``), the services, the links' base URL
    and the create's headers."""

    caller: Caller
    services: Services
    base_url: str
    prefer: str | None
    idempotency_key: str | None
    cancel_after: str | None
    priority: Priority | None
    auth: DeferredAuth | None = None


async def create_request(request: Request) -> CreateRequest:
    """``CurrentCaller``, ``ServicesDep``, ``BaseURL`` and the create headers (``PreferHeader``,
    ``IdempotencyKey``, ``CancelAfter``, ``HeaderPriority``) in one dependency, in that order, with the same
    answers: FastAPI resolving them one by one (a dependency tree of nine) cost a single create more of the
    event loop than its Redis round trips. The headers are documented by ``CREATE_HEADER_PARAMETERS``.
    The token of a caller this process has seen valid is checked later, by the create's store or before
    any other answer (``DeferredAuth``): one round trip fewer."""
    services: Services = request.app.state.services
    token = _bearer_token(request)
    auth = None
    if token is not None:
        refuse_spent(request, services, token)
    if token is not None and (seen := services.authenticator.deferred(token)) is not None:
        caller, check = seen
        auth = DeferredAuth(request, services, caller, check, token)
    else:
        caller = await current_caller(request, services)
    return CreateRequest(
        auth=auth,
        caller=caller,
        services=services,
        base_url=link_base(request, services.settings),
        prefer=prefer_of(request),
        idempotency_key=single_header(request, "Idempotency-Key"),
        cancel_after=single_header(request, "Cancel-After"),
        priority=priority_of(request),
    )


CreateRequestDep = Annotated[CreateRequest, Depends(create_request)]


def _header_parameter(name: str, description: str | None = None, **schema: Any) -> dict[str, Any]:
    """An optional string header as FastAPI documents a ``Header()`` parameter."""
    described = {"description": description} if description else {}
    return {
        **described,
        "in": "header",
        "name": name,
        "required": False,
        "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], **described, **schema, "title": name.title()},
    }


# The OpenAPI parameters ``create_request`` reads (a route's ``openapi_extra``), as the ``Header()`` aliases
# above document them.
CREATE_HEADER_PARAMETERS = [
    _header_parameter("prefer", PREFER_DESCRIPTION),
    _header_parameter("Idempotency-Key"),
    _header_parameter("Cancel-After", CANCEL_AFTER_DESCRIPTION, pattern=DURATION_PATTERN),
    _header_parameter("Kiln-Priority", PRIORITY_HEADER_DESCRIPTION),
]
