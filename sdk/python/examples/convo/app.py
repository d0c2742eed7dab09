"""Continue a stored conversation with SmolLM2, one turn per invocation, recorded with
compare-and-swap (the Go SDK's examples/convo, input for input and output for output).

Input: {"message": ..., "conversation"?: "conv_...", "expected_version"?: n}. Without a
conversation it creates one. The turn is appended only if the conversation is still at the
version the reply was computed from; when another writer got there first ("conflict") it reads
the conversation again, recomputes the reply against the new history and tries once more.
Output: {"conversation", "version", "reply", "messages", "conflicts", "turns"}, or
{"error": "not_found"} for an id this tenant does not have.
"""

import json

import realm_tenant as rt

MODEL = "smollm2-135m-instruct"
SYSTEM = "You are a helpful assistant. Answer briefly."


def prompt(history, message):
    turns = [("system", SYSTEM)] + [(m.role, m.content) for m in history] + [("user", message)]
    body = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return body + "<|im_start|>assistant\n"


def turns(conv):
    try:
        return int(json.loads(conv.state or "{}").get("turns", 0))
    except (ValueError, AttributeError):
        return 0  # a state this module did not write counts as none


def handle(request):
    message = str(request.get("message", "")).strip()
    if not message:
        raise ValueError('input needs a "message"')
    try:
        if request.get("conversation"):
            conv = rt.get_conversation(request["conversation"])
        else:
            conv = rt.create_conversation(metadata={"by": "convo"})
    except rt.RealmError as e:
        if e.code == "not-found":
            return {"error": "not_found"}
        raise
    expected = request.get("expected_version") or conv.version
    conflicts = 0
    while True:
        g = rt.generate(prompt(conv.messages, message), model=MODEL, max_tokens=32, stop=["<|im_end|>"])
        reply = g.text.strip()
        try:
            updated = rt.put_conversation(
                conv.id,
                expected_version=expected,
                append=[rt.Message("user", message), rt.Message("assistant", reply)],
                state=json.dumps({"turns": turns(conv) + 1}),
            )
        except rt.RealmError as e:
            if e.code != "conflict" or conflicts:
                raise
            # Someone else's turn landed first: continue from theirs, never over it.
            conflicts += 1
            conv = rt.get_conversation(conv.id)
            expected = conv.version
            continue
        return {
            "conversation": updated.id,
            "version": updated.version,
            "reply": reply,
            "messages": len(updated.messages),
            "conflicts": conflicts,
            "turns": turns(updated),
        }


WitWorld = rt.tenant(handle)
