"""Events: the clicks the API records in the Valkey stream, landed into daily ``live_interactions`` partitions."""
