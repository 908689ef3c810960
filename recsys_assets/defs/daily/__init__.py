"""Daily operations: the new-day sensor, the daily refresh (online features, popularity, new items' content and
retrieval index, the item cache of the running servers) and the evaluation of the list as served."""
