"""`[approval]`: which tool calls wait for a person's yes, who is asked, and the keys of the sealed state.

```toml
[approval]
select = ["tools/call:delete_*"]   # selectors, in each backend's own tool names
destructive = true                 # and every tool annotated destructiveHint: true
servers = ["files"]                # the backends it applies to (default: every one)
timeout = 120                      # seconds a 2025-11-25 question waits for its answer
secrets = ["${env:MCP_APPROVAL_SECRET}"]  # seal the 2026-07-28 requestState (newest first; ≥ 32 characters)
state_ttl = 300                    # seconds a requestState may be answered
rules = ["approval/*.toml"]        # CEL rule files: what a rule forbids is held (relative to this file)
claims = ["department"]            # token claims those rules may read
approver = { webhook = "https://approvals.example/hook", timeout = 30, signing_secret = "${env:HOOK_SECRET}" }
# approver = { webhook = "…", callback = true, timeout = 900 }  # the webhook answers 202, a person calls back later
store = "redis://127.0.0.1:6379/0" # spent nonces and callback answers, shared by every instance (default memory://)

[approval.per_server.files]           # a server's own selection, in its own tool names
select = ["tools/call:rm"]            # replaces select for it (and applies whatever `servers` says)
destructive = false                   # replaces destructive for it; enabled = false exempts it
```

Without `approver` the calling user approves (elicitation). Without `secrets` each process seals
with a random key of its own: enough for one process, not for several instances or `--workers`.
Without a Redis `store` spent 2026-07-28 nonces and waiting callbacks are per process too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_middleware.core.sealing import MIN_SECRET_LENGTH

from .config_policy import matching_files
from .toml_reader import Problem, Reader

if TYPE_CHECKING:
    from mcp_middleware.approval import ApprovalStore, WebhookApprover

    from .config_types import GatewayConfig

__all__ = [
    "ApprovalSettings",
    "ServerApproval",
    "WebhookSettings",
    "approval",
    "approval_problems",
    "approval_store_warnings",
    "approval_worker_problems",
    "server_approval",
]


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    timeout: float = 30.0
    signing_secret: str | None = None
    callback: bool = False
    """The webhook may answer 202 and decide later at the callback URL the gateway serves."""

    def approver(
        self, *, public_url: str | None = None, secrets: tuple[str, ...] = (), store: ApprovalStore | None = None
    ) -> WebhookApprover:
        from mcp_middleware.approval import WebhookApprover

        return WebhookApprover(
            self.url,
            timeout=self.timeout,
            signing_secret=self.signing_secret,
            callback=self.callback,
            public_url=public_url,
            secrets=secrets,
            store=store,
        )


@dataclass(frozen=True)
class ApprovalSettings:
    """`[approval]`: on when the section is present (and `enabled` is not false)."""

    enabled: bool = False
    select: tuple[str, ...] = ()
    destructive: bool = True
    servers: tuple[str, ...] | None = None
    """None: every backend."""
    timeout: float = 120.0
    secrets: tuple[str, ...] = ()
    state_ttl: float = 300.0
    webhook: WebhookSettings | None = None
    rules: tuple[Path, ...] = ()
    """The CEL rule files `rules` matched: a call a rule forbids is held."""
    claims: tuple[str, ...] = ()
    store: str = "memory://"
    """Spent 2026-07-28 nonces and callback answers: `memory://` (this process) or a Redis URL (shared)."""

    per_server: Mapping[str, ServerApproval] = field(default_factory=dict)
    """`[approval.per_server.NAME]`: a server's own selection, over `select`/`destructive`/`servers`."""

    def applies_to(self, server: str) -> bool:
        own = self.per_server.get(server)
        if own is not None:  # the server's own table decides for it
            return self.enabled and own.enabled
        return self.enabled and (self.servers is None or server in self.servers)

    def selection(self, server: str) -> tuple[tuple[str, ...], bool]:
        """(selectors, destructive) for `server`: its own table's where it has them."""
        own = self.per_server.get(server)
        select = own.select if own is not None and own.select is not None else self.select
        destructive = own.destructive if own is not None and own.destructive is not None else self.destructive
        return select, destructive


@dataclass(frozen=True)
class ServerApproval:
    """`[[servers]] approval = { select = […], destructive = false, enabled = false }`: over `[approval]` for it."""

    enabled: bool = True
    select: tuple[str, ...] | None = None
    destructive: bool | None = None


def server_approval(table: Reader) -> ServerApproval:
    """One `[approval.per_server.NAME]` table (its selectors are in that server's own tool names)."""
    from .validation import selector

    select = table.strings("select", ()) if "select" in table.data else None
    for position, text in enumerate(select or ()):
        selector(table, f"select[{position}]", text)
    settings = ServerApproval(
        enabled=table.boolean("enabled", True),
        select=select,
        destructive=table.boolean("destructive", True) if "destructive" in table.data else None,
    )
    table.done()
    return settings


def approval(reader: Reader, source: Path | None = None) -> ApprovalSettings:
    """Read `[approval]` (present: on unless `enabled = false`); rule files are compiled now."""
    from .validation import selector, store_url  # (config_types imports this module, validation config_types)

    d = ApprovalSettings()
    select = reader.strings("select", ())
    for position, text in enumerate(select):
        selector(reader, f"select[{position}]", text)
    secrets = reader.strings("secrets", ())
    for position, secret in enumerate(secrets):
        if len(secret) < MIN_SECRET_LENGTH:
            reader.problem(
                f"secrets[{position}]",
                f"is {len(secret)} characters long; a sealing secret needs at least {MIN_SECRET_LENGTH} "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            )
    servers = reader.strings("servers", ()) if "servers" in reader.data else None
    settings = ApprovalSettings(
        enabled=reader.boolean("enabled", True),
        select=select,
        destructive=reader.boolean("destructive", d.destructive),
        servers=servers,
        timeout=reader.number("timeout", d.timeout, positive=True),
        secrets=secrets,
        state_ttl=reader.number("state_ttl", d.state_ttl, positive=True),
        webhook=_webhook(reader.table("approver")) if "approver" in reader.data else None,
        rules=_rule_files(reader, source),
        claims=reader.strings("claims", ()),
        store=store_url(reader, "store", "approval store"),
        per_server=_per_server(reader.table("per_server")) if "per_server" in reader.data else {},
    )
    if settings.enabled and not settings.select and not settings.destructive and not settings.rules:
        reader.problem(
            None, "selects no call: give select = [...], rules = [...] or destructive = true (or enabled = false)"
        )
    reader.done()
    return settings


def _per_server(reader: Reader) -> dict[str, ServerApproval]:
    found = {name: server_approval(reader.table(name)) for name in list(reader.data)}
    reader.done()
    return found


def _rule_files(reader: Reader, source: Path | None) -> tuple[Path, ...]:
    """The files `rules` names (globs relative to the config's folder), compiled once to find their problems."""
    paths = matching_files(reader, "rules", reader.strings("rules", ()), source)
    if paths:
        from mcp_middleware.policy import CelPolicyEngine, PolicyError

        try:
            CelPolicyEngine.from_files(paths)
        except PolicyError as exc:
            for problem in exc.problems:
                reader.problem("rules", str(problem))
    return tuple(paths)


def _webhook(reader: Reader) -> WebhookSettings | None:
    url = reader.string("webhook")
    timeout = reader.number("timeout", WebhookSettings.timeout, positive=True)
    signing_secret = reader.string("signing_secret", None)
    callback = reader.boolean("callback", False)
    reader.done()
    if not isinstance(url, str):
        return None
    if not url.startswith(("https://", "http://")):
        reader.problem("webhook", f"must be an http:// or https:// URL, not {url!r}")
        return None
    return WebhookSettings(url, timeout, signing_secret, callback)


def approval_problems(config: GatewayConfig) -> list[Problem]:
    """`[approval] servers` and `[approval.per_server]` must name configured servers."""
    names = {server.name for server in config.servers}
    problems = [
        config.problem("approval.servers", f"names {name!r}, which is no [[servers]] entry")
        for name in config.approval.servers or ()
        if name not in names
    ]
    problems += [
        config.problem(f"approval.per_server.{name}", "is no [[servers]] entry")
        for name in config.approval.per_server
        if name not in names
    ]
    hook = config.approval.webhook
    if hook is not None and hook.callback and not config.gateway.public_url and "*" in config.front_door.allowed_hosts:
        problems.append(
            config.problem(
                "approval.approver.callback",
                "needs [gateway] public_url when [front_door] allowed_hosts has '*': the callback URL would be built "
                "from a Host header nobody checked (an attacker's host would receive the approver's answer)",
            )
        )
    return problems


def approval_store_warnings(config: GatewayConfig) -> list[Problem]:
    """What stays per process with a `memory://` approval store while the rate-limit or cache store is shared
    (a sign of several instances): said by `check-config`."""
    settings = config.approval
    shared = [url for url in (config.ratelimit.store, config.cache.store) if not _in_memory(url)]
    if not settings.enabled or not _in_memory(settings.store) or not shared:
        return []
    return [config.problem("approval.store", f"is memory://: with several instances {_PER_PROCESS}")]


def _in_memory(url: str) -> bool:
    return url.lower().startswith("memory:")


_PER_PROCESS = (
    "spent 2026-07-28 nonces are remembered per process (a recorded approving retry can be replayed once at "
    "each other one within state_ttl), and a webhook's callback reaching another process finds no waiting call "
    '(404): set [approval] store = "redis://…"'
)


def approval_worker_problems(config: GatewayConfig, workers: int) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) of approval under `workers` > 1 processes (see `config_workers.py`)."""
    settings = config.approval
    if workers <= 1 or not any(settings.applies_to(server.name) for server in config.servers):
        return [], []
    problems: list[Problem] = []
    callback = settings.webhook is not None and settings.webhook.callback
    if not settings.secrets and callback:
        problems.append(
            config.problem(
                "approval",
                f"has no secrets, so each of the {workers} workers would seal callback tokens with a random key of "
                "its own (a callback reaching another worker is refused): set [approval] secrets",
            )
        )
    if callback and _in_memory(settings.store):
        problems.append(
            config.problem(
                "approval.store",
                f"is memory://, and a callback reaching another of the {workers} workers would find no waiting call "
                '(404): set [approval] store = "redis://…"',
            )
        )
    if not settings.secrets and settings.webhook is None:
        problems.append(
            config.problem(
                "approval",
                f"has no secrets, so each of the {workers} workers would seal 2026-07-28 approval states with a "
                "random key of its own (a retry reaching another worker is refused): set [approval] secrets",
            )
        )
    shared = not _in_memory(settings.store)  # carries a 2025-11-25 answer to the worker that asked (mount, aggregate)
    warnings = []
    if not shared:
        warnings.append(
            config.problem(
                "approval",
                f"2025-11-25 approvals wait in the worker that asked: with {workers} workers the client's answer may "
                'reach another one (404 there, and the call times out): set [approval] store = "redis://…"; '
                "2026-07-28 approvals are unaffected",
            )
        )
    if settings.webhook is not None:
        warnings = []  # the webhook answers the worker that asked
    elif not shared:
        warnings.append(config.problem("approval", f"has store = memory://: with {workers} workers {_PER_PROCESS}"))
    return problems, warnings
