"""Per-tenant vector collections: the index (exact below a size, usearch HNSW above), metadata filters,
and their durable objects on disk or in S3. A leaf: imports no other layer of the runtime."""
