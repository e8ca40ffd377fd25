"""The equal-time reading of benchmarks/ablation.py: a run's MeanRecall at a training time, off its curve."""
import importlib.util

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)

CURVE = [[38, 10.0, 20.0], [76, 20.0, 40.0], [114, 30.0, 45.0]]  # step, training seconds, MeanRecall


def test_between_two_evaluations_the_curve_is_linear():
    assert ablation.at_time(CURVE, 15.0) == 30.0
    assert ablation.at_time(CURVE, 27.5) == 43.75
    assert ablation.at_time(CURVE, 20.0) == 40.0


def test_before_the_first_evaluation_there_is_no_reading():
    assert ablation.at_time(CURVE, 9.99) is None


def test_just_past_the_end_is_the_end_and_further_is_unknown():
    assert ablation.at_time(CURVE, 31.0) == 45.0
    assert ablation.at_time(CURVE, 31.6) is None
    assert ablation.at_time([], 1.0) is None


def test_equal_time_reads_each_row_on_its_median_clock_not_a_slowed_run():
    # Seed 1 of the slow row ran beside another job: its own clock says 9 s a step.
    runs = [
        {"row": "fast", "seed": s, "steps": 100, "seconds_per_step": 1.0, "curve": [[50, 50.0, 10.0 + s], [100, 100.0, 20.0 + s]]}
        for s in (0, 1, 2)
    ] + [
        {"row": "slow", "seed": s, "steps": 100, "seconds_per_step": per_step, "curve": [[50, 50 * per_step, 30.0], [100, 100 * per_step, 50.0]]}
        for s, per_step in ((0, 2.0), (1, 9.0), (2, 2.0))
    ]
    assert ablation.row_costs(runs) == {"fast": 1.0, "slow": 2.0}
    assert ablation.on_row_clock(runs[4], 2.0) == [[50, 100.0, 30.0], [100, 200.0, 50.0]]
    table = ablation.curve_tables(runs, [("fast", None, None), ("slow", None, None)])
    # 100 s of the fast row's time is 50 steps of the slow row: 30.0 on every seed, the slowed one too.
    assert "| slow | 30.00 ± 0.00 | 2.00 | 50 |" in table
    assert "| fast | 21.00 ± 1.00 | 1.00 | 100 |" in table


def test_equal_time_can_take_the_rows_costs_from_separate_timing_runs():
    runs = [
        {"row": "fast", "seed": 0, "steps": 100, "seconds_per_step": 1.0, "curve": [[50, 50.0, 10.0], [100, 100.0, 20.0]]},
        {"row": "slow", "seed": 0, "steps": 100, "seconds_per_step": 3.0, "curve": [[50, 150.0, 30.0], [100, 300.0, 50.0]]},
    ]
    timing = [{"row": "fast", "seconds_per_step": 1.0}, {"row": "slow", "seconds_per_step": 1.25}]
    table = ablation.curve_tables(runs, [("fast", None, None), ("slow", None, None)], timing)
    # 100 s is 80 steps at the timed 1.25 s a step (not 33 at the long run's own 3.0).
    assert "| slow | 42.00 ± 0.00 | 1.25 | 80 |" in table


def test_a_row_the_timing_runs_leave_out_keeps_its_own_clock():
    runs = [
        {"row": "fast", "seed": 0, "steps": 100, "seconds_per_step": 1.0, "curve": [[50, 50.0, 10.0], [100, 100.0, 20.0]]},
        {"row": "slow", "seed": 0, "steps": 100, "seconds_per_step": 2.0, "curve": [[50, 100.0, 30.0], [100, 200.0, 50.0]]},
    ]
    table = ablation.curve_tables(runs, [("fast", None, None), ("slow", None, None)], [{"row": "fast", "seconds_per_step": 0.5}])
    # 50 s of the fast row at its timed 0.5 s a step: 25 steps of the slow row, before its first evaluation.
    assert "| slow | outside the evaluated steps | 2.00 | 25 |" in table
