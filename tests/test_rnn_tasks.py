"""The sequence tasks: episode layout, curriculum, text streams, settings that must be rejected."""
import pytest
import torch
import yaml

from dnibench.errors import SuiteError
from dnibench.report.context import PUBLISHED_PATH
from dnibench.report.rnn import curriculum_level
from dnibench.rnn.tasks import (MAX_UNITS, CopySettings, Curriculum, EpisodeStreams, TextStreams, digit_window,
                                lstm_units)
from dnibench.suite import load_suite, plan


def test_repeat_copy_curriculum_reaches_every_published_length():
    cur = Curriculum(repeat=True)
    lengths = [cur.length]
    while cur.length < 67:
        cur.advance(samples=len(lengths))
        lengths.append(cur.length)
    assert lengths == [4, 5, 7, 9, 12, 15, 19, 23, 28, 33, 39, 45, 52, 59, 67]
    published = yaml.safe_load(PUBLISHED_PATH.read_text())["rnn"]["repeat_copy"]
    values = [v for cells in (published["bptt"], published["dni"], published["dni_aux"]) for v in cells.values() if v]
    assert set(values) <= set(lengths)
    assert cur.solved[:3] == [(4, 1), (5, 2), (7, 3)] and cur.max_len_solved == 59
    assert [curriculum_level("repeat_copy", L) for L in (4, 5, 7, 67)] == [1, 2, 3, 15]
    copy = Curriculum(repeat=False, start_n=2)
    copy.advance(samples=10)
    assert (copy.n, copy.r, copy.length, copy.max_len_solved) == (3, 1, 6, 5)


@pytest.mark.parametrize("repeat", [False, True])
def test_episode_layout(repeat):
    cur = Curriculum(repeat, start_n=3)
    cur.r = 2 if repeat else 1
    streams = EpisodeStreams(4, 5, cur, torch.Generator().manual_seed(0))
    n, r = 3, cur.r
    length = n * (r + 1) + 2
    x, y, mask, current = streams.window(3 * length)
    assert x.shape == (3 * length, 4, 5 + (2 if repeat else 1)) and y.shape == (3 * length, 4, 6)
    for b in range(4):
        start = int(torch.nonzero(x[:, b, 5] == 1)[0]) - n      # the first delimiter follows N characters
        assert start >= 0 and torch.all(x[:start, b] == 0)       # idle steps before the first episode
        chars = x[start:start + n, b, :5]
        written = y[start + n + 1:start + n + 1 + n * r, b, :5]
        assert torch.equal(written, chars.repeat(r, 1))          # the characters, R times, after the delimiter
        end = start + n + 1 + n * r
        assert y[end, b, 5] == 1 and y[end, b, :5].sum() == 0    # then the end marker
        assert mask[start:start + n + 1, b].sum() == 0 and mask[start + n + 1:end + 1, b].sum() == n * r + 1
        if repeat:
            assert x[start + n, b, 6] == pytest.approx(r / 10)
        nxt = x[end + 1:end + 1 + n, b, :5]
        assert not torch.equal(nxt, chars)                       # a fresh episode starts right after
    assert current.sum() == current.numel() and streams.episodes >= 4


def test_episodes_step_by_step_with_more_characters_than_bits():
    """Every input and target of whole episodes, step by step, against the layout built by hand: idle zeros, the N
    characters (bits only), the delimiter (stop, and R / repeat_norm, no bits), the N characters R times on the
    targets, the end marker; N = 3 > bits = 2, the curriculum at (N, R) = (3, 2); characters are bits; every end
    marker counts one episode; the same generator seed gives the same stream."""
    n, r, bits, batch = 3, 2, 2, 6
    cur = Curriculum(True, start_n=n)
    cur.r = r
    streams = EpisodeStreams(batch, bits, cur, torch.Generator().manual_seed(3), repeat_norm=4.0)
    idle = (-streams.phase).tolist()
    assert max(idle) > 0 and min(idle) >= 0 and max(idle) < n * (r + 1) + 2
    many = EpisodeStreams(200, bits, cur, torch.Generator().manual_seed(4))
    assert sorted(set((-many.phase).tolist())) == list(range(n * (r + 1) + 2))   # from none to all but one episode
    steps = 40
    x, y, mask, _ = streams.window(steps)
    assert set(x[:, :, :bits].unique().tolist()) <= {0.0, 1.0}
    assert int(y[:, :, bits].sum()) == streams.episodes > 0
    episodes_checked = 0
    for b in range(batch):
        t = idle[b]
        assert torch.all(x[:t, b] == 0) and torch.all(y[:t, b] == 0) and torch.all(mask[:t, b] == 0)
        while t + 2 * n + n * r < steps:                       # each whole episode from its first step
            chars = x[t:t + n, b, :bits]
            want_x = torch.zeros(n * (r + 1) + 2, bits + 2)
            want_x[:n, :bits] = chars
            want_x[n, bits], want_x[n, bits + 1] = 1.0, r / 4.0
            want_y = torch.zeros(n * (r + 1) + 2, bits + 1)
            want_y[n + 1:n + 1 + n * r, :bits] = chars.repeat(r, 1)
            want_y[n + 1 + n * r, bits] = 1.0
            span = slice(t, t + n * (r + 1) + 2)
            assert torch.equal(x[span, b], want_x) and torch.equal(y[span, b], want_y), (b, t)
            want_mask = torch.zeros(n * (r + 1) + 2)
            want_mask[n + 1:] = 1.0                            # the written characters (even all-zero ones), the end
            assert torch.equal(mask[span, b], want_mask)
            t += n * (r + 1) + 2
            episodes_checked += 1
    assert episodes_checked >= 2 * batch                        # the loop above compared whole episodes
    again = EpisodeStreams(batch, bits, cur, torch.Generator().manual_seed(3), repeat_norm=4.0).window(steps)
    assert all(torch.equal(a, b) for a, b in zip(again, (x, y, mask)))


def test_repeat_curriculum_grows_r_up_to_n_then_n():
    cur = Curriculum(repeat=True)
    pairs = [(cur.n, cur.r)]
    for _ in range(5):
        cur.advance(samples=0)
        pairs.append((cur.n, cur.r))
    assert pairs == [(1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 3)]


def test_digit_windows_draw_every_digit():
    d = digit_window(50, 8, 4, torch.Generator().manual_seed(0))
    assert d.shape == (50, 8) and sorted(d.unique().tolist()) == [0, 1, 2, 3]


def test_streams_take_the_new_length_at_their_next_episode():
    cur = Curriculum(False, start_n=1)
    streams = EpisodeStreams(2, 3, cur, torch.Generator().manual_seed(1))
    streams.window(2)
    cur.advance(samples=0)
    _, _, mask, current = streams.window(20)
    assert current[0].sum() < 2 and current[-1].sum() == 2      # old episodes finish at the old length
    assert streams.chars.shape[1] == 2


def test_text_streams_predict_the_next_character():
    ids = torch.arange(103)
    text = TextStreams(ids, batch=4)
    x, y = text.window(5)
    assert x.shape == (5, 4) and torch.equal(y, x + 1) and torch.equal(x[:, 1], torch.arange(25, 30))
    starts = [int(text.window(5)[0][0, 0]) for _ in range(4)]    # 25 positions per stream: 5 windows
    x, _ = text.window(5)
    assert starts == [5, 10, 15, 20] and x[0, 0] == 0             # read on, then wrapped round at the end
    TextStreams(torch.arange(9), batch=4)                         # 2 positions per stream: the fewest
    with pytest.raises(SuiteError, match="^PTB: 8 characters cannot feed a batch of 4 streams$"):
        TextStreams(torch.arange(8), batch=4)


@pytest.mark.parametrize("field,value,message", [
    ("T", 0, "field 'T'"), ("threshold_bpc", 9.0, "below the chance level of 9"),
    ("threshold_bpc", 0, "field 'threshold_bpc'"), ("start_n", 0, "field 'start_n'"), ("bits", 0, "field 'bits'"),
])
def test_out_of_range_settings_are_one_line_suite_errors(tmp_path, field, value, message):
    args = {"args": {"bptt": {"T": value}}} if field == "T" else {"task_args": {field: value}}
    suite = {"name": "bad", "task": "copy", "profiles": {"smoke": {}, "quick": {}, "paper": {}},
             "entries": [{"model": "lstm8", "method": "bptt", **args}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteError) as err:
        plan(load_suite(path), "smoke")
    text = str(err.value)
    assert "\n" not in text and str(path) in text and field in text and message in text


def test_model_names():
    assert lstm_units("lstm256") == 256 and lstm_units("lstm1") == 1 and lstm_units(f"lstm{MAX_UNITS}") == MAX_UNITS
    with pytest.raises(SuiteError, match=f"lstm{MAX_UNITS + 1}"):
        lstm_units(f"lstm{MAX_UNITS + 1}")
    for bad in ["lstm", "lstm0", "gru64", "fcn3"]:
        with pytest.raises(SuiteError, match="expected lstmN"):
            lstm_units(bad)
    with pytest.raises(ValueError, match="max_n"):
        CopySettings(start_n=5, max_n=3)
