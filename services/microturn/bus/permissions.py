"""Who may talk to whom on the bus: one NATS user per service, allowed only its own hops.

The table below is the single source of the permissions. It is used three ways:

* :func:`render_authorization` renders the nats-server ``authorization { users = [...] }`` block
  (nats-server config syntax) from a mapping user -> password; ``microturn up`` and the tests start
  the embedded server with it. A password may be an :class:`EnvVar`, rendered as a ``$NAME``
  reference that nats-server resolves from its own environment, so the config file holds no secret
  (the variable holds the password quoted: :func:`config_string`).
* :func:`permissions_data` returns the same table as plain data (``{user: {"publish": [...],
  "subscribe": [...]}}``, lists sorted) with no credentials, for the Helm chart's test to compare
  with the chart's rendered NATS config, and for operators (``python -c "import json;
  from microturn.bus.permissions import permissions_data; print(json.dumps(permissions_data()))"``).
* :func:`permission_table` gives the typed rules, each with the reason it is needed.

Users: ``interaction`` (the Ray Serve replicas), ``background``, ``tools``, ``setup`` (the
``microturn bus setup`` job: creates and updates the streams and the services' durable consumers),
and ``rollout`` (the rollout controller: reads the replicas' service reports, publishes nothing).
The edge does not use NATS and gets no user.

How the rules were found: every JetStream call the services make goes through nats-py, which maps
it to a request on a ``$JS.API.…`` subject (``nats/js/manager.py``), and every reply (publish acks,
API answers, pulled messages) comes back on the caller's inbox. A connection with a user sets its
inbox prefix to ``_INBOX.<user>`` (:func:`inbox_prefix`), so each user may subscribe to its own
replies only: with a shared ``_INBOX.>`` any user could read the messages pulled by another
(tool calls, delegations). Messages are acked, nak'ed and kept in progress by publishing to the
message's ``$JS.ACK.<stream>.<consumer>.…`` reply subject; a message is acked more than once
(``+WPI`` heartbeats, then the ack), so these are listed explicitly rather than left to
``allow_responses`` (whose default allows one response per message). No service answers requests,
so no user has ``allow_responses``.

With ``bus.manage_topology`` off (Kubernetes), services only bind to what the setup job created;
:func:`permission_table` ``(manage_topology=True)`` adds what a service needs to create the streams
and its own consumers itself (every service calls ``ensure_streams`` for all streams at start). The
local run starts its embedded server with the strict table and runs the setup step as ``setup``.

Not covered by subject permissions: a user allowed to create consumers on a stream (interaction,
on ``MT_UPDATES``) chooses their config, and a pull request names where the server delivers; the
server checks neither against the user's permissions.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from microturn.bus import subjects
from microturn.bus.streams import SERVICE_CONSUMERS, Durable

JS_API = "$JS.API"
INTERACTION = "interaction"
BACKGROUND = "background"
TOOLS = "tools"
SETUP = "setup"
ROLLOUT = "rollout"
SERVICE_USERS = (INTERACTION, BACKGROUND, TOOLS)
USERS = (*SERVICE_USERS, SETUP, ROLLOUT)

ALL_STREAMS = (
    subjects.DELEGATIONS_STREAM,
    subjects.TOOL_CALLS_STREAM,
    subjects.TIMERS_STREAM,
    subjects.UPDATES_STREAM,
    subjects.TOOL_RESULTS_STREAM,
    subjects.CANCELS_STREAM,
    subjects.DEAD_STREAM,
)

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Rule:
    """One allowed subject (NATS wildcards ``*`` and ``>``) and why it is needed."""

    subject: str
    why: str


@dataclass(frozen=True)
class UserPermissions:
    """What one NATS user may publish and subscribe to; everything else is denied."""

    user: str
    role: str
    publish: tuple[Rule, ...]
    subscribe: tuple[Rule, ...]

    @property
    def publish_allow(self) -> list[str]:
        return sorted({r.subject for r in self.publish})

    @property
    def subscribe_allow(self) -> list[str]:
        return sorted({r.subject for r in self.subscribe})


@dataclass(frozen=True)
class EnvVar:
    """A password that nats-server reads from its environment (rendered as ``$NAME``)."""

    name: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"not an environment variable name: {self.name!r}")


def inbox_prefix(user: str) -> str:
    """The inbox prefix of ``user``'s connections (``Bus.connect`` sets it): its replies only."""
    return f"_INBOX.{check_user(user)}"


def check_user(user: str) -> str:
    """A user name is one subject token (it becomes part of the inbox prefix)."""
    if not isinstance(user, str) or not _TOKEN.fullmatch(user):
        raise ValueError(f"NATS user {user!r}: use 1-64 letters, digits, '_' or '-'")
    return user


# -- building blocks -------------------------------------------------------------------------------
def _inbox(user: str) -> Rule:
    return Rule(f"{inbox_prefix(user)}.>", "replies: publish acks, JetStream API answers, pulled messages")


def _pull(d: Durable) -> list[Rule]:
    """Pull from and settle messages of one durable consumer (``WorkQueue``)."""
    return [
        Rule(f"{JS_API}.CONSUMER.MSG.NEXT.{d.stream}.{d.name}", f"fetch from durable {d.stream}/{d.name}"),
        # v1 ack subject ($JS.ACK.<stream>.<consumer>.<counts…>) and the v2 form with domain and
        # account hash tokens in front, which newer servers may send.
        Rule(f"$JS.ACK.{d.stream}.{d.name}.>", f"ack/nak/in-progress/term on {d.stream}/{d.name}"),
        Rule(f"$JS.ACK.*.*.{d.stream}.{d.name}.>", f"ack on {d.stream}/{d.name} (v2 ack subjects)"),
    ]


def _create_durable(d: Durable) -> Rule:
    # nats-py creates a consumer that has only a durable name through the DURABLE.CREATE API.
    return Rule(f"{JS_API}.CONSUMER.DURABLE.CREATE.{d.stream}.{d.name}", f"create/update {d.stream}/{d.name}")


def _ensure_streams(why: str) -> list[Rule]:
    rules = []
    for stream in ALL_STREAMS:
        rules += [
            Rule(f"{JS_API}.STREAM.INFO.{stream}", why),
            Rule(f"{JS_API}.STREAM.CREATE.{stream}", why),
            Rule(f"{JS_API}.STREAM.UPDATE.{stream}", why),
        ]
    return rules


def _stored(stream: str, why: str) -> Rule:
    # Bus.last_message: get_last_msg(direct=False) is a STREAM.MSG.GET request.
    return Rule(f"{JS_API}.STREAM.MSG.GET.{stream}", why)


def _durable(name: str) -> Durable:
    return next(d for d in SERVICE_CONSUMERS if d.name == name)


def permission_table(manage_topology: bool = False) -> dict[str, UserPermissions]:
    """Every user's permissions. ``manage_topology``: the services also create the streams and
    their own durable consumers (``bus.manage_topology`` on); off, only ``setup`` may."""
    updates_consumers = f"{subjects.UPDATES_STREAM}.*"
    interaction_pub = [
        Rule(subjects.DELEGATION_REQUEST, "delegations (DelegationClient.delegate)"),
        Rule(subjects.CANCELS, "cancellations of a delegation or a whole session"),
        Rule(
            f"{JS_API}.CONSUMER.DURABLE.CREATE.{updates_consumers}",
            "a session's update consumer session-<id> (SessionUpdates.open)",
        ),
        Rule(f"{JS_API}.CONSUMER.MSG.NEXT.{updates_consumers}", "fetch a session's updates"),
        Rule(f"$JS.ACK.{updates_consumers}.>", "ack/term a session's updates"),
        Rule(f"$JS.ACK.*.*.{updates_consumers}.>", "ack a session's updates (v2 ack subjects)"),
        Rule(f"{JS_API}.CONSUMER.DELETE.{updates_consumers}", "drop a session's consumer when it ends"),
        Rule(subjects.REPLICA_STATS, "its service report for rollouts (interaction.stats)"),
    ]
    background = _durable(subjects.BACKGROUND_CONSUMER)
    background_pub = [
        *_pull(background),
        Rule(subjects.UPDATES, "the delegation's updates to its session (UpdateStream)"),
        Rule(subjects.TOOL_CALL, "tool calls (ToolClient)"),
        _stored(subjects.TOOL_RESULTS_STREAM, "a tool result answered before the caller listened"),
        _stored(subjects.CANCELS_STREAM, "cancellations stored before the delegation started"),
        Rule(subjects.dead_subject("delegation"), "dead letters of its work queue"),
    ]
    background_sub = [
        Rule(f"{subjects.PREFIX}.cancel.>", "live cancellations of running delegations (core NATS)"),
        Rule(subjects.TOOL_RESULTS, "the result of a tool call it made (core NATS)"),
    ]
    tools, timers = _durable(subjects.TOOLS_CONSUMER), _durable(subjects.TIMERS_CONSUMER)
    tools_pub = [
        *_pull(tools),
        *_pull(timers),
        Rule(subjects.TOOL_RESULTS, "tool results (mt.tool.result.<call_id>)"),
        Rule(subjects.TIMERS, "timers set by the timer tool (BusTimerScheduler)"),
        Rule(subjects.UPDATES, "the final update of a fired timer"),
        _stored(subjects.CANCELS_STREAM, "a fired timer of a closed session is dropped"),
        Rule(subjects.dead_subject("tool"), "dead letters of the tool-call queue"),
        Rule(subjects.dead_subject("timer"), "dead letters of the timers queue"),
    ]
    setup_pub = [
        *_ensure_streams("create/update the streams (ensure_streams)"),
        *(_create_durable(d) for d in SERVICE_CONSUMERS),
    ]
    if manage_topology:
        why = "bus.manage_topology: every service ensures the streams at start"
        interaction_pub += _ensure_streams(why)
        background_pub += [*_ensure_streams(why), _create_durable(background)]
        tools_pub += [*_ensure_streams(why), _create_durable(tools), _create_durable(timers)]

    def user(name: str, role: str, pub: list[Rule], sub: list[Rule]) -> UserPermissions:
        return UserPermissions(name, role, tuple(pub), (_inbox(name), *sub))

    return {
        INTERACTION: user(INTERACTION, "Ray Serve replicas: delegate, cancel, read session updates", interaction_pub, []),
        BACKGROUND: user(BACKGROUND, "background model: delegations in, tool calls and updates out", background_pub, background_sub),
        TOOLS: user(TOOLS, "tool execution: tool calls and timers in, results and timer updates out", tools_pub, []),
        SETUP: user(SETUP, "`microturn bus setup`: the streams and the services' durable consumers", setup_pub, []),
        ROLLOUT: user(ROLLOUT, "the rollout controller: reads the replicas' service reports", [],
                      [Rule(subjects.REPLICA_STATS, "per-version SLO analysis (interaction.stats)")]),
    }  # fmt: skip


def permissions_data(manage_topology: bool = False) -> dict[str, dict[str, list[str]]]:
    """The table as plain data, without credentials: ``{user: {"publish": [...], "subscribe": [...]}}``."""
    return {
        name: {"publish": p.publish_allow, "subscribe": p.subscribe_allow}
        for name, p in permission_table(manage_topology).items()
    }


def server_permissions(perms: UserPermissions) -> dict[str, dict[str, list[str]]]:
    """The nats-server ``permissions`` of a user: ``{"publish": {"allow": [...]}, "subscribe": ...}``.
    An empty allow list means *no restriction* to nats-server, so a direction with nothing allowed is
    rendered ``{"deny": [">"]}`` instead."""
    out = {}
    for kind, allowed in (("publish", perms.publish_allow), ("subscribe", perms.subscribe_allow)):
        out[kind] = {"allow": allowed} if allowed else {"deny": [">"]}
    return out


def config_string(value: str) -> str:
    """``value`` as a double-quoted nats-server config string. Also the form to put a password in
    the environment variable of an :class:`EnvVar`: nats-server parses the variable's value as a
    config value, so an unquoted ``-abc`` or ``2-8x`` would not be read as text."""
    # nats-server config strings are JSON-like double-quoted strings; refuse what could break out.
    if any(c in value for c in '"\\') or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("NATS passwords must not contain quotes, backslashes or control characters")
    return json.dumps(value)


def render_authorization(
    passwords: Mapping[str, str | EnvVar], manage_topology: bool = False, indent: str = ""
) -> str:
    """The nats-server ``authorization`` block for the users in ``passwords`` (a subset of
    :data:`USERS`; a user without a password gets no access)."""
    table = permission_table(manage_topology)
    unknown = sorted(set(passwords) - set(table))
    if unknown:
        raise ValueError(f"no permissions defined for NATS users {unknown}; known: {list(table)}")
    lines = [f"{indent}authorization {{", f"{indent}  users = ["]
    for name in table:
        if name not in passwords:
            continue
        secret = passwords[name]
        if isinstance(secret, EnvVar):
            rendered = f"${secret.name}"
        else:
            if not secret:
                raise ValueError(f"empty password for NATS user {name}")
            rendered = config_string(secret)
        perms = table[name]
        lines += [
            f"{indent}    {{",
            f"{indent}      user: {config_string(name)}",
            f"{indent}      password: {rendered}",
            f"{indent}      permissions: {{",
            *(
                f"{indent}        {kind}: {{ {rule}: {json.dumps(subjects_)} }}"
                for kind, block in server_permissions(perms).items()
                for rule, subjects_ in block.items()
            ),
            f"{indent}      }}",
            f"{indent}    }}",
        ]
    lines += [f"{indent}  ]", f"{indent}}}"]
    return "\n".join(lines) + "\n"


def generate_passwords(users: tuple[str, ...] = USERS) -> dict[str, str]:
    """One random password per user (the local run makes new ones at every start)."""
    return {u: f"mt{secrets.token_hex(24)}" for u in users}


def password_env_var(user: str) -> str:
    """The environment variable the local run passes ``user``'s password to nats-server in."""
    return f"MT_NATS_PASSWORD_{check_user(user).upper().replace('-', '_')}"


__all__ = [
    "ROLLOUT",
    "SERVICE_USERS",
    "USERS",
    "EnvVar",
    "Rule",
    "UserPermissions",
    "config_string",
    "generate_passwords",
    "inbox_prefix",
    "password_env_var",
    "permission_table",
    "permissions_data",
    "render_authorization",
    "server_permissions",
]
