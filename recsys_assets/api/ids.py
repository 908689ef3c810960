"""The ids the API speaks: the pipeline's int64 ids for the generator, a shop's own string ids for own data.

With ``RECSYS_SOURCE`` naming a folder (``lib.sources``), requests carry the shop's user and item ids and the
answers give its item ids back; they are translated through the append-only id maps the ingest wrote
(``raw/id_maps/``, ``lib.sources.id_maps``), so Triton, Valkey and the feature store keep seeing int64 ids.

* A user id the map does not know yet (someone who arrived after the last ingest) is served as anonymous (-1):
  recommendations without personal state, and a click that changes no per-user state, until an ingest maps them.
  An empty user id is anonymous too.
* An item id the map does not know is refused (404 for an image, 422 otherwise): it is not in the catalogue.
* The maps are read when the API starts; the user map is read again when it has grown on disk (a later ingest),
  at most once per :data:`RELOAD_SECONDS`, so new users are recognised without a restart.

For the generator (:class:`GeneratorIds`) ids are the integers they always were, and a string is refused with
what is expected.
"""

from __future__ import annotations

import re
import threading
import time

from recsys_assets.api.events import InvalidRequest
from recsys_assets.lib import paths
from recsys_assets.lib.sources.id_maps import ANONYMOUS, load_id_map

RELOAD_SECONDS = 30.0
_INTEGER = re.compile(r"-?[0-9]+")


class GeneratorIds:
    """The generator's ids: integers in and out (a string is refused, as before own data existed)."""

    own = False

    def user(self, user_id: int | str) -> int:
        if isinstance(user_id, str):
            raise InvalidRequest(f"user_id {user_id!r} is not a valid integer id: expected an integer >= 0, or -1 "
                                 "for an anonymous user (this API serves the synthetic generator's ids; "
                                 "RECSYS_SOURCE is not set)")
        return user_id

    def item(self, item_id: int | str, status: int = 422) -> int:
        if isinstance(item_id, str):
            raise InvalidRequest(f"item_id {item_id!r} is not a valid integer catalogue id (this API serves the "
                                 "synthetic generator's ids; RECSYS_SOURCE is not set)", status)
        return item_id

    # Query and path parameters always arrive as text: an ASCII integer literal is the generator's id there
    # (Python's int() also reads full-width and other Unicode digits, which no client means as an id).
    def user_param(self, text: str) -> int:
        return int(text) if _INTEGER.fullmatch(text) else self.user(text)

    def item_param(self, text: str, status: int = 422) -> int:
        return int(text) if _INTEGER.fullmatch(text) else self.item(text, status)

    def item_out(self, item_id: int) -> int:
        return item_id

    def user_out(self, user_id: int) -> int:
        return user_id


class SourceIds:
    """A shop's string ids, through the id maps under the artifact root."""

    own = True

    def __init__(self, store):
        self.store = store
        if not store.exists(paths.ITEM_ID_MAP):
            raise RuntimeError(f"RECSYS_SOURCE names a source but {store.uri(paths.ITEM_ID_MAP)} does not exist: "
                               "ingest the source first (make demo SOURCE=...), or point RECSYS_ARTIFACTS at its root")
        self.items = load_id_map(store, paths.ITEM_ID_MAP, "item")
        self._item_index = self.items.index
        self._users = load_id_map(store, paths.USER_ID_MAP, "user")
        self._user_index = self._users.index
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _reload_users(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_SECONDS:
            return
        with self._lock:
            self._checked = now
            grown = load_id_map(self.store, paths.USER_ID_MAP, "user")
            if len(grown) > len(self._users):
                self._users, self._user_index = grown, grown.index

    def user(self, user_id: int | str) -> int:
        text = str(user_id)
        if not text:
            return ANONYMOUS
        if text not in self._user_index:
            self._reload_users()
        return self._user_index.get(text, ANONYMOUS)

    def item(self, item_id: int | str, status: int = 422) -> int:
        text = str(item_id)
        if text not in self._item_index:
            raise InvalidRequest(f"item_id {text!r} is not in the catalogue ({len(self.items)} items, e.g. "
                                 f"{list(self.items.source_ids[:3])}): ingest the catalogue that has it", status)
        return self._item_index[text]

    def user_param(self, text: str) -> int:
        return self.user(text)

    def item_param(self, text: str, status: int = 422) -> int:
        return self.item(text, status)

    def item_out(self, item_id: int) -> str:
        return self.items.source_ids[item_id]

    def user_out(self, user_id: int) -> str:
        return "" if user_id == ANONYMOUS or user_id >= len(self._users) else self._users.source_ids[user_id]


def load_ids(source_configured: bool, store) -> GeneratorIds | SourceIds:
    return SourceIds(store) if source_configured else GeneratorIds()
