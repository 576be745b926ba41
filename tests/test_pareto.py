import numpy as np

from nas.pareto import hypervolume_2d, pareto_front


def test_front_two_objectives_with_duplicates_and_nan():
    v = np.array([[0.9, 100], [0.8, 50], [0.85, 120], [0.9, 100], [0.7, 40], [np.nan, 1], [0.8, 60]])
    assert pareto_front(v, [True, False]) == [0, 1, 3, 4]


def test_front_three_objectives():
    v = np.array([[0.9, 100, 5.0], [0.9, 100, 4.0], [0.8, 90, 6.0]])
    assert pareto_front(v, [True, False, False]) == [1, 2]


def test_hypervolume():
    assert hypervolume_2d(np.array([[0.9, 100], [0.8, 50]]), [0.0, 200], [True, False]) == 130.0
