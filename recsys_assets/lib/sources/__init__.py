"""A shop's own data as the pipeline's source (``RECSYS_SOURCE`` = a folder or ``s3://`` prefix; see
docs/own-data.md for the contract, an example folder and what each validation does).

Modules, bottom up: :mod:`.files` (reading the folder), :mod:`.id_maps` (append-only string -> int64 ids),
:mod:`.report` (counts per reason and the quarantine), :mod:`.catalogue` (items, descriptions, images, users),
:mod:`.events` (event logs -> labelled daily interactions, the negative sampler) and :mod:`.ingest` (all of it
written to the artifact store in the generator's layout).
"""
