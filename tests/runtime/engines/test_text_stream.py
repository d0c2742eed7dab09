"""Incremental detokenization: UTF-8 split across tokens and stop strings held back."""

from realm.runtime.engines.text_stream import TextStream


def test_multibyte_character_split_across_pieces() -> None:
    s = TextStream()
    euro = "€".encode()
    assert s.feed(b"price " + euro[:1]) == "price "
    assert s.feed(euro[1:2]) == ""
    assert s.feed(euro[2:] + b"5") == "€5"


def test_stop_string_spanning_pieces_is_not_emitted() -> None:
    s = TextStream(stop=("END",))
    out = s.feed(b"hello E") + s.feed(b"N")
    assert out == "hello "
    assert s.feed(b"D and more") == ""
    assert s.stopped


def test_false_alarm_prefix_is_released() -> None:
    s = TextStream(stop=("END",))
    assert s.feed(b"the E") == "the "
    assert s.feed(b"nd") == "End"
    assert not s.stopped
    assert s.feed(b" E") == " "
    assert s.flush() == "E"


def test_earliest_of_several_stops_wins() -> None:
    s = TextStream(stop=("b", "abc"))
    assert s.feed(b"xxabc") == "xx"  # "abc" starts before "b"
    assert s.stopped


def test_invalid_utf8_is_replaced_not_raised() -> None:
    s = TextStream()
    assert s.feed(b"\xff ok") == "\ufffd ok"
