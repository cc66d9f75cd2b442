"""The consistency kind's invariant language (stackwatch.probes.invariants): what it accepts,
what it refuses (with a message that says why), and that evaluation agrees with arithmetic."""

from __future__ import annotations

import random

import pytest

from stackwatch.probes.invariants import Invariant


@pytest.mark.parametrize("text,values,expected", [
    ("active <= total", {"active": 51, "total": 63}, True),
    ("active <= total", {"active": 128, "total": 74}, False),
    ("0 <= total <= 200", {"total": 127}, True),
    ("0 <= total <= 200", {"total": 201}, False),
    ("0 <= total <= 200", {"total": -1}, False),
    ("operational + degraded + outage == active", {"operational": 40, "degraded": 8, "outage": 3, "active": 51}, True),
    ("operational + degraded + outage == active", {"operational": 40, "degraded": 8, "outage": 4, "active": 51}, False),
    ("active / total >= 0.5", {"active": 0, "total": 0}, False),  # 0/0 is NaN: no comparison holds
    ("-active < 0", {"active": 3}, True),
    ("active * 2 - total != 0", {"active": 5, "total": 10}, False),
    ("active <= total", {"active": 5}, None),  # a field the source did not give: not judged
])
def test_invariants_evaluate_as_written(text, values, expected):
    assert Invariant(text).holds(values) is expected


@pytest.mark.parametrize("text,message", [
    ("active", "must compare"),
    ("active <=", "cannot read invariant"),
    ("__import__('os').system('true') == 0", "may only use field names, numbers"),
    ("total.real <= 1", "may only use field names, numbers"),
    ("total[0] <= 1", "may only use field names, numbers"),
    ("'a' == 'a'", "may only use field names, numbers"),
    ("(lambda: 1)() == 1", "may only use field names, numbers"),
    ("total ** 2 <= 4", "may only use field names, numbers"),
    ("active <= total", "uses total, which is not a field"),
    ("x" * 501, "at most 500 characters"),
    (" + ".join(["a"] * 120) + " <= 1", "more than 200 terms"),
    ("(" * 200 + "a" + ")" * 200 + " < 1", None),  # deep nesting: refused or read, never a crash
])
def test_hostile_or_wrong_invariants_are_refused_with_a_reason(text, message):
    fields = {"active", "a"} if "not a field" in (message or "") else None
    if message is None:
        try:
            Invariant(text)
        except ValueError:
            pass
        return
    with pytest.raises(ValueError) as info:
        Invariant(text, fields)
    assert message in str(info.value)


def test_evaluation_agrees_with_arithmetic_on_random_expressions():
    """Random expressions over three fields, compared with the same arithmetic done directly."""
    rng = random.Random(7)
    ops = ["+", "-", "*", "/"]
    cmps = ["<", "<=", ">", ">=", "==", "!="]
    for _ in range(300):
        values = {n: float(rng.randint(-5, 5)) for n in ("a", "b", "c")}
        terms = [rng.choice(["a", "b", "c", str(rng.randint(0, 9))]) for _ in range(4)]
        left = f"{terms[0]} {rng.choice(ops)} {terms[1]}"
        right = f"{terms[2]} {rng.choice(ops)} {terms[3]}"
        cmp = rng.choice(cmps)
        text = f"{left} {cmp} {right}"
        try:
            expected = bool(eval(text, {"__builtins__": {}}, dict(values)))  # the test's own reference
        except ZeroDivisionError:
            expected = cmp == "!="  # a side is NaN: it compares unequal to everything, nothing else holds
        got = Invariant(text).holds(values)
        assert got is expected, (text, values)


def test_equal_texts_are_equal_invariants():
    assert Invariant("a  <=   b") == Invariant("a <= b")
    assert len({Invariant("a <= b"), Invariant(" a <= b ")}) == 1
    assert Invariant("a <= b") != Invariant("a < b")
