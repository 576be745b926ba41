"""Private names of other libraries that the drivers rely on, pinned: where an upgrade removes or
renames one, this fails and says which, instead of a driver failing deep inside a search.
(Skipped where the extra is not installed; the driver modules name each use.)"""
import importlib
import inspect

import pytest

# (module, class or None for the module itself, names it must still have or name in its source)
PINNED = {
    "nni": [
        # nas/drivers/nni.py _TPE._run replaces HPOTunerStrategy._run and keeps its bookkeeping
        ("nni.nas.strategy", "TPE", ("_run", "_thread_lock", "_model_count", "_model_to_id", "tuner", "engine",
                                     "model_space")),
        # _Experiment keeps NNI's global experiment list untouched; the driver refuses the web manager
        ("nni.nas.experiment", "NasExperiment", ("_start_without_nni_manager", "_stop_without_nni_manager",
                                                 "_nni_manager_required")),
        # stdout logging is restored only if it was on
        ("nni.runtime.log", None, ("_handlers", "silence_stdout", "start_stdout_logging")),
    ],
    "ray": [
        # _ConstrainedOptunaSearch passes budget violations to the Optuna trial Tune created
        ("ray.tune.search.optuna", "OptunaSearch", ("_ot_trials", "_completed_trials", "on_trial_complete")),
    ],
}


def _source(obj) -> str:
    try:
        return "".join(inspect.getsource(c) for c in inspect.getmro(obj) if c is not object) \
            if inspect.isclass(obj) else inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


@pytest.mark.parametrize("extra,module,cls,names", [(e, *row) for e, rows in PINNED.items() for row in rows],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_private_names_the_drivers_use_still_exist(extra, module, cls, names):
    pytest.importorskip(extra, reason=f"the {extra} extra is not installed")
    mod = importlib.import_module(module)
    obj = getattr(mod, cls) if cls else mod
    src = _source(obj)
    missing = [n for n in names if not hasattr(obj, n) and n not in src]
    assert not missing, (f"{module}.{cls or ''} no longer has {missing}: nas/drivers/{extra}.py relies on them; "
                         f"adapt the driver or pin the extra's version in setup.cfg")


def test_optunas_private_hypervolume_still_computes_a_known_area():
    """bench/samplers.py measures fronts with optuna._hypervolume (Optuna has no public one)."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    # two points (0.2, 0.6) and (0.5, 0.3) under reference (1, 1): 0.8*0.4 + 0.5*0.7 - 0.5*0.4 = 0.47
    assert abs(compute_hypervolume(np.array([[0.2, 0.6], [0.5, 0.3]]), np.array([1.0, 1.0])) - 0.47) < 1e-12


def test_the_ray_drivers_nsga2_sampler_pickles_and_still_samples():
    """Tune pickles its searcher; Optuna 5.1's NSGA-II holds a threading.Lock (``_thread_lock``),
    which nas/drivers/ray.py's PicklableNSGAII leaves out and re-creates."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import pickle

    import optuna
    from nas.drivers.ray import picklable

    s = optuna.samplers.NSGAIISampler(seed=0, population_size=4)
    assert "_thread_lock" in vars(s) or _pickles(s), "NSGA-II neither holds _thread_lock nor pickles: look again"
    back = pickle.loads(pickle.dumps(picklable(s)))
    assert isinstance(back, optuna.samplers.NSGAIISampler) and "_thread_lock" in vars(back)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=back)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=6)
    assert len(study.trials) == 6


def _pickles(obj) -> bool:
    import pickle

    try:
        pickle.dumps(obj)
        return True
    except Exception:
        return False
