"""The recurrent training loops (dnibench/rnn/train.py) on tiny inputs, each number they log or return held against
what the loop was given: Penn Treebank's validation and test on the characters asked for, early stopping after
``patience`` evaluations without a strictly lower validation BPC, the test at the best-validation parameters,
the log points, the evaluation clock and the throughput; bits per character worked by hand; the two-timescale
system's message gradient (waited for, synthetic, or cut)."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

from dnibench.data import TextData
from dnibench.rnn import train as loops
from dnibench.rnn.core import LN2, LSTMCore
from dnibench.suite import RunSpec, TrainSettings
from dnibench.tasks import get_task

VOCAB = ["\n", "a", "b", "c", "d"]


def text(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, len(VOCAB), (n,), generator=torch.Generator().manual_seed(seed))


DATA = TextData(train=text(300, 0), valid=text(50, 1), test=text(40, 2), vocab=VOCAB)


def spec(task="ptb", steps=10, eval_every=1, log_every=100, method="bptt", batch=2, T=3, decay_at=(),
         **task_args) -> RunSpec:
    return RunSpec(suite="t", profile="smoke", task=task, model="lstm8", method=method, method_args={"T": T},
                   task_args=task_args, train=TrainSettings(steps=steps, batch_size=batch, lr=1e-2,
                                                            lr_decay_at=list(decay_at), lr_decay_factor=0.1,
                                                            eval_every=eval_every, log_every=log_every),
                   seed=0, device="cpu")


def run(run_spec: RunSpec, data=DATA) -> tuple[dict, dict[int, dict]]:
    """The registered task's loop, called as the runner calls it: (summary, the rows logged before it by step)."""
    logged, steps = [], []
    start = time.perf_counter()
    summary = get_task(run_spec.task).train(run_spec, data, lambda metrics, step: logged.append((step, metrics)),
                                            steps.append)
    took = time.perf_counter() - start                     # the clocks count parts of this, never more
    assert 0 < summary["total_wall_s/train"] + summary.get("total_wall_s/eval", 0.0) < took
    assert steps == list(range(1, len(steps) + 1))
    assert logged[-1] == (len(steps), summary)             # the summary, logged last at the last step trained
    rows = {}
    for step, metrics in logged[:-1]:
        assert step not in rows
        rows[step] = metrics
    return summary, rows


def assert_rates(rows: dict[int, dict], summary: dict, per_step: int) -> None:
    """Each row's samples/s and steps/s over its own window (the growth of wall_s/train since the row before), the
    run's mean over the whole training clock, which only grows and ends at the last row's."""
    steps, walls = [0] + sorted(rows), [0.0] + [rows[s]["wall_s/train"] for s in sorted(rows)]
    assert all(b > a for a, b in zip(walls, walls[1:]))
    for before, step, (w0, w1) in zip(steps, steps[1:], zip(walls, walls[1:])):
        assert rows[step]["samples_per_s"] * (w1 - w0) == pytest.approx((step - before) * per_step, rel=1e-6)
        assert rows[step]["steps_per_s"] * (w1 - w0) == pytest.approx(step - before, rel=1e-6)
        assert rows[step]["cpu_threads"] >= 1
    assert summary["total_wall_s/train"] == pytest.approx(walls[-1], rel=1e-12)
    assert summary["mean_samples_per_s"] * walls[-1] == pytest.approx(steps[-1] * per_step, rel=1e-6)


class ScriptedBPC:
    """bits_per_char replaced: the validation BPCs in order, a fixed test BPC; each call's text length, streams
    and the LSTM's parameters as they were."""

    def __init__(self, monkeypatch, valid: list[float], test_bpc: float = 7.5, test_len: int = 40):
        self.valid, self.test_bpc, self.test_len, self.calls = list(valid), test_bpc, test_len, []
        monkeypatch.setattr(loops, "bits_per_char", self)

    def __call__(self, core, ids, vocab, streams, device):
        params = [p.detach().clone() for p in core.parameters()]
        is_test = len(self.calls) == len(self.valid) or not self.valid
        self.calls.append({"chars": len(ids), "streams": streams, "params": params, "test": is_test})
        return self.test_bpc if is_test else self.valid.pop(0)


def test_ptb_stops_after_patience_evaluations_without_a_lower_bpc_and_tests_the_best_parameters(monkeypatch):
    # evaluations at steps 1..5: a new best at 1 and 2, a tie at 3 (not better), then 2.5 and 9.0: the third
    # evaluation without a new best (step 5) stops the run; the test runs at step 2's parameters
    bpc = ScriptedBPC(monkeypatch, [3.0, 2.0, 2.0, 2.5, 9.0], test_len=20)
    summary, rows = run(spec(steps=10, eval_every=1, patience=3, valid_chars=30, test_chars=20, eval_streams=3))
    assert (summary["best_valid_bpc"], summary["best_step"], summary["steps_done"]) == (2.0, 2.0, 5.0)
    assert summary["test_bpc"] == 7.5
    assert [c["chars"] for c in bpc.calls] == [30] * 5 + [20] and {c["streams"] for c in bpc.calls} == {3}
    tested = bpc.calls[-1]["params"]
    for at_best, now in zip(bpc.calls[1]["params"], tested):
        torch.testing.assert_close(now, at_best, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(bpc.calls[4]["params"], tested))   # training moved them
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert [rows[s]["valid_bpc"] for s in range(1, 6)] == [3.0, 2.0, 2.0, 2.5, 9.0]
    evals = [rows[s]["wall_s/eval"] for s in range(1, 6)]
    assert evals[0] > 0 and evals == sorted(evals) and summary["total_wall_s/eval"] >= evals[-1]
    assert all(rows[s]["lr"] == 1e-2 and rows[s]["lr/lstm"] == 1e-2 for s in range(1, 5)), rows[1]


def test_ptb_without_patience_runs_every_step_on_the_whole_texts(monkeypatch):
    bpc = ScriptedBPC(monkeypatch, [5.0, 4.0, 4.5, 4.6])
    summary, rows = run(spec(steps=7, eval_every=2, log_every=3, eval_streams=2))
    # log points: every 3rd step, every evaluation (2nd step) and the last
    assert sorted(rows) == [2, 3, 4, 6, 7]
    assert {s for s in rows if "valid_bpc" in rows[s]} == {2, 4, 6, 7}
    assert all("train_bpc" in rows[s] and "samples_per_s" in rows[s] for s in rows)
    assert (summary["steps_done"], summary["best_step"], summary["best_valid_bpc"]) == (7.0, 4.0, 4.0)
    assert [c["chars"] for c in bpc.calls] == [50] * 4 + [40]
    assert_rates(rows, summary, per_step=3 * 2)               # characters: T x streams per step
    for key in ("wall_step_median_ms", "wall_step_dispersion", "cpu_threads"):
        assert key in summary


def test_bits_per_char_is_the_streams_cross_entropy_in_bits():
    """The text read as side-by-side streams, state carried on across chunks: the mean over every predicted
    character of -log2 p(next), as computed in one pass by hand."""
    torch.manual_seed(0)
    core = LSTMCore(len(VOCAB), 6, len(VOCAB))
    ids = text(41, 3)
    streams = 4                                             # 10 characters each, 40 predicted
    inputs = ids[:40].view(streams, 10).t()
    targets = ids[1:41].view(streams, 10).t()
    with torch.no_grad():
        logits, _, _ = core(F.one_hot(inputs, len(VOCAB)).float(), core.initial_state(streams, "cpu"))
        want = F.cross_entropy(logits.reshape(-1, len(VOCAB)), targets.reshape(-1), reduction="sum").item() / 40 / LN2
    for chunk in (3, 256):                                  # the state carries over chunk boundaries
        got = loops.bits_per_char(core, ids, len(VOCAB), streams, "cpu", chunk=chunk)
        assert got == pytest.approx(want, rel=1e-5)
    assert math.isfinite(want) and want > 0


def multiscale_spec(steps: int, log_every: int, method: str = "bptt", batch: int = 4, **over) -> RunSpec:
    """The two-timescale system at its smallest: 4 digits, a 3-number message, a 5-unit B."""
    return spec(task="multiscale", steps=steps, log_every=log_every, method=method, batch=batch,
                **{"digits": 4, "message_dim": 3, "b_units": 5, **over})


def multiscale(method: str, gradient: str) -> tuple[dict, dict[int, dict]]:
    s = multiscale_spec(4, 1, method, message_gradient=gradient)
    s = s.model_copy(update={"train": s.train.model_copy(update={"lr_decay_at": [2], "lr_decay_factor": 0.1})})
    return run(s, data=None)


def test_two_timescale_message_gradient_waited_for_synthetic_or_cut():
    """A learns from B's loss through the message: BPTT waits for B's true gradient, DNI takes a synthetic one
    (and regresses its synthesizer on the true one), "none" cuts it, where the method's own state synthesizer plays
    no part, so A trains the same under BPTT and DNI."""
    waited, waited_rows = multiscale("bptt", "method")
    synthetic, synthetic_rows = multiscale("dni_bptt", "method")
    cut_bptt, _ = multiscale("bptt", "none")
    cut_dni, cut_rows = multiscale("dni_bptt", "none")
    # A's LSTM is built first, from the seed, and the message and B from a stream of their own: the same in both
    assert cut_bptt["final_train_bpc"] == cut_dni["final_train_bpc"]
    assert [r["b_bpc"] for r in cut_rows.values()] == [r["b_bpc"] for r in multiscale("bptt", "none")[1].values()]
    assert cut_bptt["final_train_bpc"] != waited["final_train_bpc"]         # A got B's gradient, or not
    assert synthetic["final_train_bpc"] not in (waited["final_train_bpc"], cut_bptt["final_train_bpc"])
    assert all(row["synth_loss"] > 0 for row in synthetic_rows.values())
    assert not any("synth_loss" in row or "lr/synth" in row for row in [*waited_rows.values(), *cut_rows.values()])
    # every optimizer by role, each on the schedule (x0.1 from step 2)
    for rows, roles in ((waited_rows, ("a", "b")), (synthetic_rows, ("a", "b", "synth"))):
        assert {k for k in rows[1] if k.startswith("lr/")} == {f"lr/{r}" for r in roles}
        for role in roles:
            assert rows[3][f"lr/{role}"] == pytest.approx(0.1 * rows[1][f"lr/{role}"], rel=1e-12)
    assert waited_rows[1]["lr/a"] == 1e-2 and waited_rows[3]["lr"] == pytest.approx(1e-3)
    assert 0 <= waited["final_b_error"] <= 100 and waited["final_b_error"] == waited_rows[4]["b_error"]


class RecordedCopyLoss:
    """copy_loss wrapped: each window's losses scaled by ``scale`` (1e-6: every curriculum check passes; 1e6: none
    does) and their sum and the characters counted recorded, to work train_bpc out by hand."""

    def __init__(self, monkeypatch, scale: float):
        self.scale, self.windows, real = scale, [], loops.copy_loss

        def copy_loss(y, mask):
            inner = real(y, mask)

            def loss_fn(logits):
                losses = inner(logits) * scale
                self.windows.append((losses.detach().sum().item(), mask.sum().item()))
                return losses
            return loss_fn
        monkeypatch.setattr(loops, "copy_loss", copy_loss)


def copy_spec(steps, log_every=100, T=3, **task_args):
    return spec(task="copy", steps=steps, log_every=log_every, batch=4, T=T,
                **{"bits": 2, "check_every": 2, "reset_state": True, **task_args})


def test_copy_curriculum_lengthens_at_each_passed_check_and_logs_when(monkeypatch):
    loss = RecordedCopyLoss(monkeypatch, 1e-6)
    summary, rows = run(copy_spec(steps=7, log_every=5))
    # checks at steps 2, 4, 6 all pass: N = 1, 2, 3 solved (lengths N + 3), then N = 4 is trained on
    assert (summary["max_len_solved"], summary["final_len"], summary["steps_done"]) == (6.0, 7.0, 7.0)
    assert sorted(rows) == [2, 4, 5, 6, 7]                  # each solved length, every 5th step, the last
    assert [rows[s]["max_len_solved"] for s in (2, 4, 5, 6, 7)] == [4.0, 5.0, 5.0, 6.0, 6.0]
    assert [rows[s]["current_len"] for s in (2, 4, 5, 6, 7)] == [5.0, 6.0, 6.0, 7.0, 7.0]
    for step, length in ((2, 4), (4, 5), (6, 6)):
        assert rows[step][f"samples_at_len/{length}"] == rows[step]["samples"]      # episodes seen by then
        assert [s for s in rows if f"samples_at_len/{length}" in rows[s]] == [step]
    episodes = [rows[s]["samples"] for s in sorted(rows)]
    assert episodes == sorted(episodes) and episodes[-1] > 0
    # train_bpc: the interval's summed losses over its characters, in bits
    last = 0
    for step in sorted(rows):
        err = sum(e for e, _ in loss.windows[last:step])
        chars = sum(c for _, c in loss.windows[last:step])
        assert rows[step]["train_bpc"] == pytest.approx(err / chars / LN2, rel=1e-5), step
        last = step
    assert_rates(rows, summary, per_step=3 * 4)                # time steps x streams (not x input channels: 3)
    for key in ("wall_step_median_ms", "wall_step_dispersion"):
        assert key in summary
    assert summary["cpu_threads"] >= 1
    assert all(rows[s]["lr"] == 1e-2 and rows[s]["lr/lstm"] == 1e-2 for s in rows)


def test_copy_stops_once_max_n_is_solved_and_a_failed_check_keeps_the_length(monkeypatch):
    RecordedCopyLoss(monkeypatch, 1e-6)
    summary, rows = run(copy_spec(steps=9, max_n=2))
    assert (summary["steps_done"], summary["max_len_solved"], summary["final_len"]) == (4.0, 5.0, 6.0)
    assert sorted(rows) == [2, 4]
    monkeypatch.undo()
    RecordedCopyLoss(monkeypatch, 1e6)                       # far above the threshold: never solved
    summary, rows = run(copy_spec(steps=5, max_n=2))
    assert (summary["steps_done"], summary["max_len_solved"], summary["final_len"]) == (5.0, 0.0, 4.0)
    assert sorted(rows) == [5] and rows[5]["max_len_solved"] == 0.0 and rows[5]["current_len"] == 4.0


def test_repeat_copy_grows_n_and_r_in_turn_and_counts_length_as_asked(monkeypatch):
    RecordedCopyLoss(monkeypatch, 1e-6)
    made = []

    class Streams(loops.EpisodeStreams):
        def __init__(self, *args):
            made.append(args)
            super().__init__(*args)
    monkeypatch.setattr(loops, "EpisodeStreams", Streams)
    summary, rows = run(spec(task="repeat_copy", steps=6, batch=3, bits=2, check_every=2, repeat_norm=4.0))
    assert (summary["max_len_solved"], summary["final_len"]) == (7.0, 9.0)      # (N, R) = (1,1) (2,1) (2,2) (3,2)
    assert made[-1][0] == 3 and made[-1][1] == 2 and made[-1][2].repeat and made[-1][4] == 4.0
    assert [s for s in rows if any(k.startswith("samples_at_len/") for k in rows[s])] == [2, 4, 6]
    summary, _ = run(spec(task="copy", steps=4, batch=3, bits=2, check_every=2, length_counts="N"))
    assert (summary["max_len_solved"], summary["final_len"]) == (2.0, 3.0)       # N alone: 1, 2 solved, 3 next


def test_copy_loss_sums_the_channels_where_an_output_is_asked():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 3, 5), torch.randint(0, 2, (4, 3, 5)).float()
    mask = torch.tensor([[1.0, 0.0, 1.0]] * 4)
    want = -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)).sum(-1) * mask
    torch.testing.assert_close(loops.copy_loss(y, mask)(logits), want)


def test_a_feed_forward_method_is_refused_by_the_recurrent_loops():
    with pytest.raises(TypeError, match="method 'bprop' is not a recurrent method"):
        loops._build(spec(method="bprop"), 5, 5)


def test_two_timescale_rows_are_the_means_of_their_windows():
    """The same run (same seed) logged every step and every second step: a row's bits per character, error and
    synthesizer loss are the means over its window's steps (every window has as many characters)."""
    def logged(every):
        s = multiscale_spec(4, every, "dni_bptt", batch=16)
        return run(s, data=None)
    summary, each = logged(1)
    _, pairs = logged(2)
    assert sorted(each) == [1, 2, 3, 4] and sorted(pairs) == [2, 4]
    for step in (2, 4):
        for key in ("train_bpc", "b_bpc", "b_error", "synth_loss"):
            want = (each[step - 1][key] + each[step][key]) / 2
            assert pairs[step][key] == pytest.approx(want, rel=1e-6), (step, key)
    assert summary["final_b_error"] == each[4]["b_error"] and summary["final_b_bpc"] == each[4]["b_bpc"]
    errors = [row["b_error"] for row in each.values()]
    assert all(0 <= e <= 100 and (e * 16 / 100) == pytest.approx(round(e * 16 / 100)) for e in errors)
    assert min(errors) < 100
    assert_rates(each, summary, per_step=3 * 16)
    assert summary["cpu_threads"] >= 1 and "wall_step_dispersion" in summary


def test_copy_check_passes_only_strictly_below_the_threshold_in_bits(monkeypatch):
    """A loss of exactly 0.5 nats per counted character (0.5 / ln 2 bits, exact in every sum): not solved at that
    threshold (strictly below), solved just above it; the first check (two steps of one time step) sees no written
    character yet and solves nothing."""
    def constant(y, mask):
        return lambda logits: 0 * logits.sum(-1) + mask * 0.5
    monkeypatch.setattr(loops, "copy_loss", constant)
    solved = {}
    for threshold in (0.5 / LN2, 0.5 / LN2 + 1e-9):
        summary, rows = run(copy_spec(steps=12, T=1, check_every=2, threshold_bpc=threshold))
        solved[threshold] = summary["max_len_solved"]
        assert all(row["train_bpc"] == pytest.approx(0.5 / LN2) for row in rows.values() if row["train_bpc"] > 0)
    assert list(solved.values())[0] == 0.0 and list(solved.values())[1] > 0


def test_a_non_finite_loss_fails_the_run_at_its_step(monkeypatch):
    """The first step whose loss is not finite is the one the failure names, in each recurrent loop."""
    from dnibench.errors import Diverged

    def poisoned(real, at):
        calls = []

        def make(*args):
            inner = real(*args)

            def loss_fn(logits):
                calls.append(1)
                losses = inner(logits)
                return losses * float("nan") if len(calls) == at else losses
            return loss_fn
        return make
    cases = [("copy_loss", copy_spec(steps=6, log_every=6)), ("ptb_loss", spec(steps=6, eval_every=6, log_every=6)),
             ("ptb_loss", multiscale_spec(6, 6))]
    for name, run_spec in cases:
        with monkeypatch.context() as patch:
            patch.setattr(loops, name, poisoned(getattr(loops, name), at=4))
            if run_spec.task == "ptb":
                ScriptedBPC(patch, [1.0])
            with pytest.raises(Diverged, match=r"^diverged at step 4 \(non-finite loss\)$"):
                run(run_spec, data=None if run_spec.task == "multiscale" else DATA)


@pytest.mark.parametrize("task", ["ptb", "copy"])
def test_dni_aux_logs_its_synthesizer_and_aux_losses_per_step_and_the_schedule(monkeypatch, task):
    if task == "ptb":
        ScriptedBPC(monkeypatch, [3.0, 2.0])
    args = {"valid_chars": 20, "test_chars": 20} if task == "ptb" else {"bits": 2, "check_every": 2}
    summary, rows = run(spec(task=task, steps=4, eval_every=2, log_every=2, method="dni_bptt_aux", decay_at=[3],
                             **args))
    assert sorted(rows) == [2, 4]
    for row in rows.values():
        assert row["synth_loss"] > 0 and row["aux_loss"] > 0
    assert rows[2]["lr"] == 1e-2 and rows[4]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("method", ["bptt", "dni_bptt"])
def test_two_timescale_steps_match_the_system_written_out(method):
    """Three steps of the two-timescale system written out from the loop's docstring against the rows the loop
    logs (every row after the first depends on the updates before it). BPTT: A waits, one backward of A's
    summed-over-time, batch-mean loss plus B's batch-mean loss. DNI: A adds <m, synthetic gradient at m> to its
    loss and updates at once, B trains on a cut copy of m, and B's true gradient at m regresses the synthesizer."""
    from dnibench.methods.base import adam
    T, batch, digits, dim, units = 3, 4, 4, 3, 5
    s = multiscale_spec(3, 1, method, batch=batch, T=T, digits=digits, message_dim=dim, b_units=units)
    _, rows = run(s, data=None)
    _, core, built = loops._build(s, digits, digits)           # the seed, then A's LSTM and the method
    with torch.random.fork_rng(devices=[]):                     # the message and B: their own stream
        torch.manual_seed(0 + loops.PAIRED_INIT_OFFSET)
        message = torch.nn.Linear(core.hidden, dim)
        b_cell, b_head = torch.nn.LSTMCell(dim, units), torch.nn.Linear(units, T + 1)
    a_opt = adam(list(core.parameters()) + list(message.parameters()), 1e-2)
    b_opt = adam(list(b_cell.parameters()) + list(b_head.parameters()), 1e-2)
    interface = built.message_interface(dim)
    assert (interface is None) == (method == "bptt")
    gen = torch.Generator().manual_seed(0)
    a_state, b_state = torch.zeros(batch, 2 * core.hidden), (torch.zeros(batch, units), torch.zeros(batch, units))
    for step in (1, 2, 3):
        d = torch.randint(0, digits, (T, batch), generator=gen)
        count = (d % 2).sum(0)
        logits, a_out, outputs = core(F.one_hot(d, digits).float(), a_state)
        a_losses = F.cross_entropy(logits.reshape(-1, digits), d.reshape(-1), reduction="none").view(T, batch)
        m = message(outputs[-1])
        b_in = m if interface is None else m.detach().requires_grad_(True)
        h, c = b_cell(b_in, b_state)
        b_logits = b_head(h)
        b_losses = F.cross_entropy(b_logits, count, reduction="none")
        if interface is None:
            (a_losses.sum(0).mean() + b_losses.mean()).backward()
        else:
            (a_losses.sum(0).mean() + (m * interface.send(m)).sum()).backward()
            b_losses.mean().backward()
            synth_loss = interface.receive(b_in.grad).item()
        for opt in (a_opt, b_opt):
            opt.step()
            opt.zero_grad()
        a_state, b_state = a_out.detach(), (h.detach(), c.detach())
        row = rows[step]
        assert row["train_bpc"] == pytest.approx(a_losses.mean().item() / LN2, rel=1e-5), step
        assert row["b_bpc"] == pytest.approx(b_losses.mean().item() / LN2, rel=1e-5), step
        assert row["b_error"] == pytest.approx(100 * (b_logits.argmax(1) != count).float().mean().item()), step
        if interface is not None:
            assert row["synth_loss"] == pytest.approx(synth_loss, rel=1e-5), step


def test_two_timescale_methods_start_from_the_same_weights_at_one_seed():
    """paired_init (the default): at one seed BPTT and DNI start A, the message and B from the same weights, so
    their first rows' losses agree (the same forward); paired_init false draws B after the method's own models,
    as runs logged before the setting did, and DNI's B starts elsewhere."""
    def first_row(method, paired):
        _, rows = run(multiscale_spec(1, 1, method, paired_init=paired), data=None)
        return rows[1]["train_bpc"], rows[1]["b_bpc"], rows[1]["b_error"]
    assert first_row("bptt", True) == first_row("dni_bptt", True)
    assert first_row("bptt", False)[0] == first_row("dni_bptt", False)[0]     # A's LSTM: drawn first either way
    assert first_row("bptt", False)[1] != first_row("dni_bptt", False)[1]
    assert first_row("bptt", False)[1] != first_row("bptt", True)[1]
