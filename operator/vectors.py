"""The operator's half of `Tenant.spec.vectors`: usage in the Tenant's status, and deletion per its
`deletionPolicy`.

The runtime pods write collections (runtime/vectors/store.py) and refuse the writes that would pass the
Tenant's limits; the operator reports what the collections hold, because it sees the Tenant and the
pods do not write its status, and it deletes them when the Tenant goes, because it outlives any pod.
Both only where collections are shared: in the platform's bucket (the chart's `s3.bucket`, which makes
the operator publish `vectors.backend: s3`), under `<vectors prefix>/<owner key>/`, the owner key being
the Tenant's namespace and uid under the installation secret, as for KV snapshots. Without a bucket each
pod keeps its collections on its own disk, where the operator cannot reach them; the status then says
nothing measured (no `vectorsMeasured`).

Credentials: those of the KV snapshots in the platform's bucket (snapshots.credentials).
"""

from __future__ import annotations

from realm.operator.builders import S3Options, shared_store_bucket
from realm.operator.kube import Kube
from realm.operator.snapshots import S3Unavailable, credentials
from realm.runtime.conversations.s3_store import make_client
from realm.runtime.spec.runtime_config import VectorsConfig
from realm.runtime.vectors.manifests import Usage, delete_owner, usage_of
from realm.runtime.vectors.objects import ObjectsUnavailable, S3Objects

PREFIX = VectorsConfig().prefix  # what the operator publishes (builders.runtime_config)


def store_for(k: Kube, namespace: str, s3: S3Options | None) -> S3Objects | None:
    """The objects of `namespace`'s Tenants' collections, as its pods reach them; None without a
    platform bucket. Only manifests are read (runtime/vectors/manifests.py): the operator never loads
    an index. Raises S3Unavailable when the credentials Secret is named but cannot be read."""
    bucket = shared_store_bucket(s3)
    if s3 is None or bucket is None:
        return None
    access, secret = credentials(k, namespace, s3)
    return S3Objects(make_client(s3.endpoint, s3.region, access, secret), bucket, PREFIX)


__all__ = ("PREFIX", "ObjectsUnavailable", "S3Unavailable", "Usage", "delete_owner", "store_for", "usage_of")
