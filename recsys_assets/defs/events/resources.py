"""Where the click stream lives: the project's Valkey (the ``valkey`` resource), logical db ``events_db``.

The stream key and its format are the API's (``recsys_assets.api.stream``). On a cluster-mode server every key
space is db 0, told apart by prefix, so ``events_db`` is ignored there.
"""

import os

import dagster as dg

from recsys_assets.defs.feature_store.resources import ValkeyResource
from recsys_assets.lib.settings import Settings
from recsys_assets.lib.valkey_server import ping

EVENTS_DB_ENV = "RECSYS_VALKEY_EVENTS_DB"
DEFAULT_EVENTS_DB = 2


class EventStreamResource(dg.ConfigurableResource):
    """The logical database of the click stream in the Valkey of the ``valkey`` resource."""

    events_db: int = DEFAULT_EVENTS_DB

    def client(self, valkey: ValkeyResource):
        """A client on the stream's database (starts or reuses the embedded Valkey, whose AOF holds the stream)."""
        layout = valkey.layout()
        return valkey.endpoint().client(db=0 if layout.cluster else self.events_db, cluster=layout.cluster)

    def client_if_running(self, valkey: ValkeyResource):
        """Like :meth:`client`, but None instead of starting the embedded server when it is not running (sensors
        only look; the stream waits in the append-only file until a server runs again). A server on the port that
        serves another artifact root's data raises ``ValkeyError`` (the embedded server's own reuse check)."""
        if not valkey.url and not ping(valkey.host, valkey.port):
            return None
        return self.client(valkey)


def build_resources(settings: Settings) -> dict:
    raw = os.environ.get(EVENTS_DB_ENV, str(DEFAULT_EVENTS_DB))
    try:
        db = int(raw)
    except ValueError as exc:
        raise ValueError(f"{EVENTS_DB_ENV}={raw!r}: expected a database number such as {DEFAULT_EVENTS_DB}") from exc
    return {"event_stream": EventStreamResource(events_db=db)}
