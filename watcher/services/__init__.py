"""Services the handlers act through: the extractor, the vector store, the catalog and file access.

``abc`` holds the interfaces handlers see; the modules beside it hold the real implementations, and
:func:`imgwatch.services.build.build_context` is the one place that constructs them.
"""
