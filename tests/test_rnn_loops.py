"""The recurrent training loops (dnibench/rnn/train.py) on tiny inputs, each number they log or return held against
what the loop was given: Penn Treebank's validation and test on the characters asked for, early stopping after
``patience`` evaluations without a strictly lower validation BPC, the test at the best-validation parameters,
the log points, the evaluation clock and the throughput; bits per character worked by hand; the two-timescale
system's message gradient (waited for, synthetic, or cut)."""
import math

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


def spec(task="ptb", steps=10, eval_every=1, log_every=100, method="bptt", batch=2, **task_args) -> RunSpec:
    return RunSpec(suite="t", profile="smoke", task=task, model="lstm8", method=method, method_args={"T": 3},
                   task_args=task_args, train=TrainSettings(steps=steps, batch_size=batch, lr=1e-2, lr_decay_at=[],
                                                            eval_every=eval_every, log_every=log_every),
                   seed=0, device="cpu")


def run(run_spec: RunSpec, data=DATA) -> tuple[dict, dict[int, dict]]:
    """The registered task's loop, called as the runner calls it: (summary, the rows logged before it by step)."""
    logged, steps = [], []
    summary = get_task(run_spec.task).train(run_spec, data, lambda metrics, step: logged.append((step, metrics)),
                                            steps.append)
    assert steps == list(range(1, len(steps) + 1))
    assert logged[-1] == (len(steps), summary)             # the summary, logged last at the last step trained
    rows = {}
    for step, metrics in logged[:-1]:
        assert step not in rows
        rows[step] = metrics
    return summary, rows


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
    # throughput: characters (T x streams per step) over the training clock, which excludes the evaluations
    assert summary["mean_samples_per_s"] == pytest.approx(7 * 3 * 2 / summary["total_wall_s/train"], rel=1e-9)
    assert summary["total_wall_s/train"] == pytest.approx(rows[7]["wall_s/train"], rel=1e-12)
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


def multiscale(method: str, gradient: str) -> tuple[dict, dict[int, dict]]:
    s = spec(task="multiscale", steps=4, log_every=1, method=method, batch=4, digits=4, message_dim=3, b_units=5,
             message_gradient=gradient)
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
    # A's LSTM is built first, from the seed, in both (B and the message are drawn after the method's own models)
    assert cut_bptt["final_train_bpc"] == cut_dni["final_train_bpc"]
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
