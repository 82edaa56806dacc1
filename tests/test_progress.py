"""Progress bars appear on a terminal and never in files or pipes."""

import io

import pytest

from pyimgano.runtime.progress import Progress, track

pytestmark = pytest.mark.edge


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_is_drawn_on_a_terminal_and_ends_with_a_newline():
    stream = Terminal()
    bar = Progress("features", 4, stream=stream)
    bar.update()
    bar.update(3)
    text = stream.getvalue()
    assert "\rfeatures [#######" in text and "1/4" in text and text.endswith("4/4 0s\n")


def test_nothing_is_written_to_a_file_or_pipe():
    stream = io.StringIO()
    bar = Progress("coreset", 10, stream=stream)
    bar.update(10)
    assert stream.getvalue() == "" and bar.done == 10


def test_track_yields_every_item_in_order():
    assert list(track(iter([3, 1, 2]), "x", 3)) == [3, 1, 2]
