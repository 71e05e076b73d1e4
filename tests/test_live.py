"""The study's live status line: what it says, and that the running trials' times move."""

from jaxhpo.journal import PendingTrial
from jaxhpo.live import LiveStatus
from tests.test_proposers import record


def test_the_status_line_says_where_the_study_is():
    now = [1000.0]
    history = [record(0, {}, 1.5, "default"), record(1, {}, 1.2, "tpe"), record(2, {}, None, "tpe")]
    running = {3: PendingTrial(3, {}, "tpe", {}, None, 0.0), 4: PendingTrial(4, {}, "llm→fallback", {}, None, 0.0)}
    live = LiveStatus(history, running, 40, 900.0, lambda: 123.4, clock=lambda: now[0])
    assert live.text() == ("3/40 done, 5 started · best 1.2000 (trial 1, tpe) · budget 123s of 900s, 777s left · "
                           "running 3 (tpe, 0s), 4 (llm→fallback, 0s)")  # fmt: skip
    now[0] += 12.0
    running.pop(3)
    live.doing = "asking tpe for trial 5"
    assert live.text().endswith("running 4 (llm→fallback, 12s) · asking tpe for trial 5…")
    unlimited = LiveStatus([], {}, 10, None, lambda: 0.0)
    assert unlimited.text() == "0/10 done, 0 started · 0s of trials" and str(unlimited.__rich__()) == unlimited.text()
