"""The feed's wire: message structs, close codes, and the per-connection filters (pure).

Every outbox row becomes one JSON message, encoded once per process (not once per client):
`Item` carries the encoded text plus the few fields filters look at. A websocket text frame
holds one or more messages, one JSON object per line (a block's events travel in one frame).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import msgspec
from litestar.exceptions import HTTPException

from api import params
from discograph.encoding import checksum_address, parse_address

# Close codes (README "Websocket feed"): 4xxx mirror the HTTP status they resemble.
CLOSE_GOING_AWAY = 1001  # the server is shutting down: reconnect with your last cursor
CLOSE_TOO_BIG = 1009  # a client message larger than WS_MAX_MESSAGE
CLOSE_TRY_LATER = 1013  # the database is unavailable: reconnect with your last cursor
CLOSE_UNAUTHENTICATED = 4001  # the token is missing a claim, expired, or its signature is bad
CLOSE_FORBIDDEN = 4003  # the browser Origin is not allowed, or the token grants no role
CLOSE_SLOW_CONSUMER = 4008  # the connection's queue overflowed: resume with the cursor given
CLOSE_TOO_MANY = 4029  # too many connections from this IP (WS_MAX_PER_IP)
CLOSE_BAD_REQUEST = 4400  # an unknown filter, a bad value or cursor, a message not understood
CLOSE_IDLE = 4408  # the client sent nothing for WS_IDLE_TIMEOUT seconds
CLOSE_CURSOR_GONE = 4410  # `since` is older than the retained outbox: re-sync from the read API

EVENT_TYPES = ("transfer", "mint", "metadata", "removed", "mint_status", "finalized")
FILTERS = ("since", "contract", "token_id", "address", "album_id", "types")


class _Event(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    cursor: str = ""
    chain_id: int


class _ChainFact(_Event, kw_only=True):
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    contract: str
    token_id: str


class TransferMessage(_ChainFact, tag="transfer", kw_only=True):
    from_: str = msgspec.field(name="from")
    to: str


class MintMessage(_ChainFact, tag="mint", kw_only=True):
    uri: str | None = None
    album_id: str | None = None


class MetadataMessage(_ChainFact, tag="metadata", kw_only=True):
    uri: str | None = None
    album_id: str | None = None


class RemovedMessage(_ChainFact, tag="removed", kw_only=True):
    """An event of an orphaned block, announced again (eth_subscribe's `removed`)."""

    removed_type: str
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    uri: str | None = None
    album_id: str | None = None


class MintStatusMessage(_Event, tag="mint_status", kw_only=True):
    """A mint request's new status: only for the connection authenticated as its requester."""

    mint_id: str
    album_id: str
    status: str
    requester: str
    to: str
    contract: str | None = None
    nonce: int | None = None
    tx_hash: str | None = None
    block_number: int | None = None
    block_hash: str | None = None
    token_id: str | None = None
    error: str | None = None


class FinalizedMessage(_Event, tag="finalized", kw_only=True):
    """The finalized block moved up: every fact at or below it is final."""

    block_number: int
    block_hash: str


OutboxMessage = (
    TransferMessage
    | MintMessage
    | MetadataMessage
    | RemovedMessage
    | MintStatusMessage
    | FinalizedMessage
)
_decoder = msgspec.json.Decoder(OutboxMessage)
_encoder = msgspec.json.Encoder()


class Item(msgspec.Struct, array_like=True, frozen=True):
    """One outbox row ready to send: its encoded message and what filters look at."""

    seq: int
    type: str
    contract: str | None
    token_id: str | None
    from_: str | None
    to: str | None
    album_id: str | None
    requester: str | None
    wire: str


def item_of(seq: int, payload: str | bytes) -> Item:
    """The wire message of an outbox row (its payload gains the `cursor`)."""
    message = _decoder.decode(payload)
    message.cursor = str(seq)
    wire = _encoder.encode(message).decode()
    kind = message.__struct_config__.tag
    if isinstance(message, FinalizedMessage):
        return Item(seq, "finalized", None, None, None, None, None, None, wire)
    if isinstance(message, MintStatusMessage):
        return Item(
            seq,
            "mint_status",
            message.contract,
            message.token_id,
            None,
            message.to,
            message.album_id,
            message.requester,
            wire,
        )
    from_ = getattr(message, "from_", None)
    return Item(
        seq,
        str(kind),
        message.contract,
        message.token_id,
        from_,
        getattr(message, "to", None),
        getattr(message, "album_id", None),
        None,
        wire,
    )


encode_items = msgspec.json.Encoder().encode
decode_items = msgspec.json.Decoder(tuple[int, list[Item]]).decode  # (after, items)


class Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="type"):
    """Sent every WS_HEARTBEAT seconds: the connection's position (resume from it)."""

    cursor: str


class Live(msgspec.Struct, tag="live", tag_field="type"):
    """Sent once replay is over: from here on messages arrive as they are committed."""

    cursor: str
    authenticated: bool


def control(message: Heartbeat | Live) -> str:
    return _encoder.encode(message).decode()


class BadRequest(ValueError):
    """A query parameter or client message the feed does not accept (close 4400)."""


class Filters(msgspec.Struct, frozen=True):
    """A connection's filters; every given one must match (AND).

    Entity filters (contract, token_id, address = from or to, album_id) apply to the event
    messages; `finalized` is about the chain, not an entity, and only `types` filters it.
    """

    contract: str | None = None
    token_id: str | None = None
    address: str | None = None
    album_id: str | None = None
    types: frozenset[str] | None = None

    @property
    def everything(self) -> bool:
        return self == _EVERYTHING

    def matches(self, item: Item) -> bool:
        if self.types is not None and item.type not in self.types:
            return False
        if item.type == "finalized":
            return True
        if self.contract is not None and item.contract != self.contract:
            return False
        if self.token_id is not None and item.token_id != self.token_id:
            return False
        if self.address is not None and self.address not in (item.from_, item.to):
            return False
        return self.album_id is None or item.album_id == self.album_id


_EVERYTHING = Filters()


def _address(name: str, value: str) -> str:
    try:
        return checksum_address(parse_address(value))
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def parse_query(query: Mapping[str, list[str]]) -> tuple[int | None, Filters]:
    """`since` and the filters from the query string; BadRequest names what is wrong."""
    for name, values in query.items():
        if name not in FILTERS:
            raise BadRequest(f"unknown parameter {name!r} (filters: {', '.join(FILTERS[1:])})")
        if len(values) != 1:
            raise BadRequest(f"{name}: give it once")
    value = {name: values[0] for name, values in query.items()}
    since = None
    if "since" in value:
        raw = value["since"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) >= 2**63:
            raise BadRequest("since: must be a cursor the feed sent (a decimal seq)")
        since = int(raw)
    token_id = value.get("token_id")
    if token_id is not None:
        try:
            token_id = str(params.token_id("token_id", token_id))  # the read API's rule
        except HTTPException as exc:
            raise BadRequest(str(exc.detail)) from None
    album_id = value.get("album_id")
    if album_id is not None:
        try:
            album_id = str(uuid.UUID(album_id))
        except ValueError:
            raise BadRequest("album_id: must be a UUID") from None
    types = None
    if "types" in value:
        names = [t.strip() for t in value["types"].split(",") if t.strip()]
        unknown = sorted(set(names) - set(EVENT_TYPES))
        if unknown or not names:
            raise BadRequest(f"types: each must be one of {', '.join(EVENT_TYPES)}")
        types = frozenset(names)
    return since, Filters(
        contract=_address("contract", value["contract"]) if "contract" in value else None,
        token_id=token_id,
        address=_address("address", value["address"]) if "address" in value else None,
        album_id=album_id,
        types=types,
    )


class ClientMessage(msgspec.Struct, tag_field="type", forbid_unknown_fields=True):
    pass


class Auth(ClientMessage, tag="auth"):
    """A browser's way to authenticate: the first message, `{"type":"auth","token":"…"}`."""

    token: str


class Ping(ClientMessage, tag="ping"):
    """Keeps the connection alive (any message does); answering heartbeats with it is enough."""


class Pong(ClientMessage, tag="pong"):
    pass


_client_decoder = msgspec.json.Decoder(Auth | Ping | Pong)


def parse_client_message(data: str | bytes) -> Auth | Ping | Pong:
    try:
        message: Auth | Ping | Pong = _client_decoder.decode(data)
        return message
    except msgspec.DecodeError as exc:
        raise BadRequest(f"message not understood: {str(exc)[:80]}") from None
