"""The runtime's peers: the other pods of its namespace that serve the models it does not load.

`discovery.py` lists which pods are ready (the Kubernetes API's EndpointSlices, never static config),
`kube.py` how this process reaches that API, `picker.py` which ready pod takes a call, and
`credential.py` the internal credential a call carries. Nothing here knows tenants' specs, HTTP
routes or engines; `serving/remote.py` puts them together.
"""

from .credential import CredentialError, InternalCredential
from .discovery import Discovery, Endpoint, EndpointSliceDiscovery, StaticDiscovery
from .picker import pick

__all__ = [
    "CredentialError",
    "Discovery",
    "Endpoint",
    "EndpointSliceDiscovery",
    "InternalCredential",
    "StaticDiscovery",
    "pick",
]
