"""The one training loop of ``luxc run`` and ``LoadedStep.run`` (runtime/artifacts/_run_loop.py): where it
saves and evaluates, which batch each step takes, and how it stops. A counting step stands in
for a compiled one; the numbers come from the plan's definition (multiples of the cadence
counted from step 0, and the end)."""

import pytest

from luxc.runtime.artifacts._run_loop import RunHooks, RunPlan, train
from luxc.runtime.trust._guarded_call import StepInterrupted


class _Counting:
    """A step whose loss is the batch index it was given; records each call's size."""

    def __init__(self, step: int = 0, fail_at: int | None = None):
        self.step_count, self.calls, self.fail_at = step, [], fail_at

    def call_steps(self, k, data, batches, deadline, stop):
        if self.fail_at is not None and self.step_count + k >= self.fail_at:
            raise StepInterrupted("a stranger's call never returned")
        self.calls.append(k)
        return [(float(batches(i)), []) for i in range(k)]

    def check_can_train(self):
        pass


def _run(step, plan, stop=None):
    seen = {"losses": [], "checkpoints": [], "evaluations": []}
    hooks = RunHooks(lambda s, loss, stats: seen["losses"].append((s, loss)), stop,
                     seen["evaluations"].append, seen["checkpoints"].append)
    train(step, plan, hooks, data=[], batches=float)
    return seen


def _cadence(every, first, end):
    return [s for s in range(first, end + 1) if s % every == 0 or s == end]


def test_checkpoints_and_evaluations_fall_on_their_multiples_and_at_the_end():
    step = _Counting()
    seen = _run(step, RunPlan(10, 0, steps_per_call=2, checkpoint_every=3, eval_every=4))
    assert seen["checkpoints"] == _cadence(3, 1, 10) == [3, 6, 9, 10]
    assert seen["evaluations"] == _cadence(4, 1, 10) == [4, 8, 10]
    # Segments end at 3, 4, 6, 8, 9, 10; each is cut into calls of at most 2 steps.
    assert step.calls == [2, 1, 1, 2, 2, 1, 1]
    assert seen["losses"] == [(s, float(s - 1)) for s in range(1, 11)]  # step s: batch s - 1


def test_a_resumed_run_saves_evaluates_and_draws_batches_as_an_uninterrupted_one():
    step = _Counting(step=5)  # resumed at step 5 of a run that started at step 0
    seen = _run(step, RunPlan(10, 0, steps_per_call=3, checkpoint_every=3, eval_every=4))
    assert seen["checkpoints"] == _cadence(3, 6, 10) == [6, 9, 10]
    assert seen["evaluations"] == _cadence(4, 6, 10) == [8, 10]
    assert seen["losses"] == [(s, float(s - 1)) for s in range(6, 11)]


def test_a_run_from_a_later_origin_counts_its_batches_from_its_first_step():
    step = _Counting(step=7)
    seen = _run(step, RunPlan(10, 7, steps_per_call=2))
    assert seen["losses"] == [(8, 0.0), (9, 1.0), (10, 2.0)]
    assert seen["checkpoints"] == seen["evaluations"] == [] and step.calls == [2, 1]


def test_a_stop_ends_the_run_after_the_call_and_saves_that_state_once():
    step = _Counting()
    seen = _run(step, RunPlan(10, 0, checkpoint_every=3), stop=lambda: step.step_count >= 4)
    assert step.step_count == 4 and seen["checkpoints"] == [3, 4]


def test_a_run_stopped_before_its_first_call_still_saves_its_state():
    step = _Counting(step=2)
    seen = _run(step, RunPlan(10, 0, checkpoint_every=3), stop=lambda: True)
    assert step.calls == [] and seen["checkpoints"] == [2]


def test_an_abandoned_call_saves_the_last_finished_state_then_raises():
    step = _Counting(fail_at=5)
    checkpoints = []
    with pytest.raises(StepInterrupted):
        train(step, RunPlan(10, 0, checkpoint_every=3), RunHooks(checkpoint=checkpoints.append),
              data=[], batches=float)
    assert step.step_count == 4 and checkpoints == [3, 4]


@pytest.mark.parametrize(("field", "value"), [("steps_per_call", 0), ("checkpoint_every", 0),
                                              ("eval_every", -1)])
def test_a_plan_refuses_a_count_below_one(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be at least 1.*received {value}$"):
        RunPlan(10, **{field: value})


def test_a_spread_plan_checkpoints_and_evaluates_about_ten_times():
    plan = RunPlan.spread(100, 95)
    assert (plan.end, plan.checkpoint_every, plan.eval_every) == (195, 10, 10)
    assert plan.segment_lengths(100) == (10, 5)  # 10-step segments, then the last 5
