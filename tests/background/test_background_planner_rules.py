"""The planner's request parsing, without a bus."""

from __future__ import annotations

import pytest

from microturn.background.planner import arithmetic_expression, card_topic, parse_seconds, plain, timer_label


@pytest.mark.parametrize(
    ("text", "expr"),
    [
        ("What is 12 times (3 plus 4)?", "12 * (3 + 4)"),
        ("calculate 2^10", "2^10"),
        ("what's the square root of 144", "sqrt(144)"),
        ("how much is 1,000 divided by 8", "1000 / 8"),
        ("what is 5 x 3", "5*3"),
        ("what is 7 squared", "7 **2"),
    ],
)
def test_arithmetic_is_recognised(text, expr):
    assert arithmetic_expression(text) == expr


@pytest.mark.parametrize(
    "text", ["what is a micro-turn?", "what is the cost of 3 apples", "who is 42", "hello"]
)
def test_non_arithmetic_is_left_alone(text):
    assert arithmetic_expression(text) is None


@pytest.mark.parametrize(
    ("text", "seconds", "label"),
    [
        ("set a timer for 5 minutes for the tea", 300, "the tea"),
        ("remind me in 10 seconds to stretch", 10, "stretch"),
        ("Set a timer for 1 hour and 30 minutes", 5400, ""),
        ("timer for half an hour", 1800, ""),
        ("set a timer", None, ""),
    ],
)
def test_timer_duration_and_label(text, seconds, label):
    assert parse_seconds(text) == seconds
    assert timer_label(text) == label


def test_card_topic_and_plain_text():
    assert card_topic("show me a card about green tea on the screen") == "green tea"
    assert plain("| A | B |\n|---|---|\n| `x` | **y** |") == "A; B; x; y"
