"""What a bare model name's version pick is sticky by (runtime/api/schemas.py route_key): the
conversation, else the client's X-Realm-Route-Key, else OpenAI's `user`, else nothing."""

from __future__ import annotations

from starlette.datastructures import Headers

from realm.runtime.api.schemas import route_key

KEYED = Headers({"X-Realm-Route-Key": "client-7"})


def test_a_conversation_wins_over_the_header_and_the_user() -> None:
    assert route_key(KEYED, conversation="conv_1", user="u") == "conv_1"


def test_the_header_wins_over_the_user() -> None:
    assert route_key(KEYED, conversation=None, user="u") == "client-7"


def test_the_user_field_is_the_last_resort() -> None:
    assert route_key(Headers({}), conversation=None, user="u") == "u"


def test_nothing_given_is_a_fresh_draw() -> None:
    assert route_key(Headers({}), conversation=None, user=None) is None
