"""What a run shows in a terminal: the tutorial's lines above a progress bar that rich draws, and plain lines
(no bar, no control codes) when the output is not a terminal."""

import io

from distmnist.runs.summaries import RunReporter


class Terminal(io.StringIO):
    def isatty(self):
        return True


def report(stream):
    reporter = RunReporter(None, total_steps=8, learning_rate=1.5, stream=stream)
    reporter.accuracy(0, 0.1)
    reporter.losses([(0, 0.5), (2, 0.3)], 4, 12345.0)  # a call of steps 0-3, logged every 2
    reporter.close()
    return stream.getvalue()


def test_a_terminal_gets_the_lines_and_a_bar():
    shown = report(Terminal())
    for line in ("step 0 Evaluate Acc: 0.1000", "step 0 loss: 0.5000", "step 2 loss: 0.3000"):
        assert line in shown
    assert "12,345 ex/s" in shown and "4/8" in shown  # the bar: examples/s and steps done of all


def test_a_pipe_gets_plain_lines_only():
    assert report(io.StringIO()).splitlines() == [
        "step 0 Evaluate Acc: 0.1000",
        "step 0 loss: 0.5000",
        "step 2 loss: 0.3000",
    ]


def test_the_bar_counts_and_says_lines_above_itself():
    from distmnist.common.progress import Bar

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = Bar(3, "reading", stream)
        bar.say("a.png: 7 (99.9%)")
        bar.update(2)
        bar.close()
    assert pipe.getvalue() == "a.png: 7 (99.9%)\n"
    assert "a.png: 7 (99.9%)" in terminal.getvalue() and "2/3" in terminal.getvalue()
