"""Infrastructure shared by the HTTP layer (``app``) and the workers
(``workers``): settings, database engine and ORM rows, the artifact store,
job progress bookkeeping, dataset state and the broker (Celery client, ping).

Imports run one way: ``app`` (routers, auth, uploads) -> ``app.core`` <-
``workers``, and ``models`` below all of them. Nothing here imports the
HTTP layer, the workers or torch.
"""
