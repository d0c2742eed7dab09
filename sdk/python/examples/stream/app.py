"""Stream: SmolLM2's completion of {"prompt": "...", "max_tokens": n} reaches the caller as it
is generated; a last line gives the token counts."""

from typing import Any

import realm_tenant as rt


class WitWorld(rt.Tenant):
    def handle(self, request: Any) -> None:
        request = request if isinstance(request, dict) else {}
        g = rt.generate_stream(
            str(request.get("prompt", "")),
            model="smollm2-135m-instruct",
            max_tokens=int(request.get("max_tokens") or 32),
        )
        # The text itself was emitted by the host while it was generated.
        rt.emit(
            f"\n[{g.finish_reason}: {g.prompt_tokens} prompt + {g.completion_tokens} completion tokens]\n"
        )
