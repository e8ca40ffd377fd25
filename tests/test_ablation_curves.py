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
