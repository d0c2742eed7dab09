"""Echo: emits the invocation's input back unchanged (the smallest tenant; used by the tests).

Input "probe:model-info:<name>" instead emits the result of load_model_by_name, or the error
code the host returned, so tests can see host errors arrive in the guest as values.
"""

import realm_tenant as rt


class WitWorld(rt.Tenant):
    def main(self) -> None:
        # `main`, not `handle`: echo passes the raw text through, JSON or not.
        text = rt.input_text()
        prefix = "probe:model-info:"
        if not text.startswith(prefix):
            rt.emit(text)
            return
        try:
            info = rt.load_model(text[len(prefix) :])
            rt.emit(f"ok:{info.name}@{info.version}")
        except rt.RealmError as e:
            rt.emit(f"err:{e.code}:{e.message}")
