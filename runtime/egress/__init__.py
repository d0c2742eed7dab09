"""Outbound calls under a tenant's allowlist (docs/egress.md).

`urls` parses and normalizes a URL, `allowlist` the Spin-syntax patterns, `addresses` which addresses
may be reached, `resolver` the one DNS seam, `checks` all of them together (`check_url`), `transport`
the pinned httpx transport, `client` one call with its redirects and limits. Nothing here knows
tenants, the serving layer or the API (runtime/serving/egress.py wires them), and it imports no other
layer: runtime/spec/egress.py uses `allowlist` to validate a Tenant's patterns. This file imports
nothing, so that the operator, which validates specs, never loads the HTTP client.
"""
