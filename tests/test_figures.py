"""Every figure drawn in a step is shown, whatever backend the model's code picked."""

from __future__ import annotations

import pytest

from agent_kernel.sandbox import Sandbox


@pytest.fixture(scope="module")
def sb():
    with Sandbox(timeout=60) as sandbox:
        yield sandbox


def _pngs(execution) -> int:
    return sum("image/png" in d for d in execution.displays)


def test_a_figure_drawn_after_switching_to_agg_is_shown(sb) -> None:
    ex = sb.execute("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                    "fig, ax = plt.subplots(); ax.plot([1, 3, 2]); ax.set_title('trend')")
    assert ex.ok, ex.error
    assert _pngs(ex) == 1
    assert any("title 'trend'" in d.get("text/plain", "") for d in ex.displays)  # the model reads what it shows
    assert _pngs(sb.execute("print('next step')")) == 0  # shown once, then closed


def test_a_figure_only_saved_is_shown_once(sb) -> None:
    ex = sb.execute("import io\nimport matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
                    "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.savefig(io.BytesIO(), format='png')")
    assert ex.ok, ex.error
    assert _pngs(ex) == 1
