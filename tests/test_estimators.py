"""The scikit-learn estimators on data bundled with aeon (tiny budgets): the scikit-learn contract, aeon's
collection formats (unequal lengths included), determinism, pickling, and one clear error per bad input."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402

import unicornn  # noqa: E402
from unicornn.estimators import RIDGE_ALPHAS, as_cases, auto_dt, spread_scales  # noqa: E402
from unicornn.heads import pool_over_time  # noqa: E402
from unicornn.tasks.uea import bundled_names, load_uea, to_collection  # noqa: E402

#: Tiny budgets of the two training modes (``TINY``: end to end, where epochs, early stopping and the
#: validation split are tested).
TINY = dict(
    training="full", hidden_size=8, num_layers=2, n_epochs=3, batch_size=8, device="cpu", backend="reference"
)
TINY_READOUT = dict(training="readout", hidden_size=16, device="cpu", backend="reference")
MODES = {"full": TINY, "readout": TINY_READOUT}
both_modes = pytest.mark.parametrize("tiny", list(MODES.values()), ids=list(MODES))


def _bundled(name):
    if name not in bundled_names():
        pytest.skip(f"aeon with its bundled {name} is not installed")
    tr, te = load_uea(name)
    return (*to_collection(tr), *to_collection(te))


@pytest.fixture(scope="module")
def gunpoint():
    """GunPoint: 24 training cases (both classes), 20 test cases, first 60 time points."""
    Xtr, ytr, Xte, yte = _bundled("GunPoint")
    return Xtr[:24, :, :60], ytr[:24], Xte[:20, :, :60], yte[:20]


@pytest.fixture(scope="module")
def vowels():
    """JapaneseVowels: unequal-length list, 12 channels; 40 training cases, 15 test cases."""
    Xtr, ytr, Xte, yte = _bundled("JapaneseVowels")
    return Xtr[:40], ytr[:40], Xte[:15], yte[:15]


@both_modes
def test_classifier_fit_predict_proba_score(gunpoint, tiny):
    Xtr, ytr, Xte, yte = gunpoint
    clf = unicornn.UnICORNNClassifier(random_state=0, **tiny).fit(Xtr, ytr)
    assert list(clf.classes_) == sorted(set(ytr))
    proba = clf.predict_proba(Xte)
    assert proba.shape == (len(Xte), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    pred = clf.predict(Xte)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(axis=1)])
    assert clf.score(Xte, yte) == pytest.approx(np.mean(pred == yte))
    assert clf.n_channels_ == 1 and clf.n_timepoints_ == 60
    if tiny["training"] == "full":
        assert 1 <= clf.best_epoch_ <= clf.n_epochs_ <= 3 and len(clf.history_) == clf.n_epochs_
        assert clf.dt_ == auto_dt(60) and clf.model_.readout == "last"
    else:
        assert clf.best_epoch_ == clf.n_epochs_ == 0 and clf.history_ == []
        assert clf.dt_ == 1.0 and clf.model_.readout == "pool" and clf.ridge_alpha_ in RIDGE_ALPHAS


@both_modes
def test_deterministic_for_a_random_state(gunpoint, tiny):
    Xtr, ytr, Xte, _ = gunpoint
    a = unicornn.UnICORNNClassifier(random_state=3, **tiny).fit(Xtr, ytr).predict_proba(Xte)
    b = unicornn.UnICORNNClassifier(random_state=3, **tiny).fit(Xtr, ytr).predict_proba(Xte)
    c = unicornn.UnICORNNClassifier(random_state=4, **tiny).fit(Xtr, ytr).predict_proba(Xte)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@both_modes
def test_fit_leaves_the_global_rng_alone(gunpoint, tiny):
    Xtr, ytr, _, _ = gunpoint
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    unicornn.UnICORNNClassifier(random_state=0, **tiny).fit(Xtr, ytr)
    assert torch.equal(torch.rand(3), expected)


@both_modes
def test_standardises_with_training_statistics(gunpoint, tiny):
    """A shift and scale of X (train and test alike) changes nothing: the inputs are standardised."""
    Xtr, ytr, Xte, _ = gunpoint
    a = unicornn.UnICORNNClassifier(random_state=0, **tiny).fit(Xtr, ytr)
    b = unicornn.UnICORNNClassifier(random_state=0, **tiny).fit(Xtr * 5.0 + 100.0, ytr)
    np.testing.assert_allclose(b.channel_mean_, a.channel_mean_ * 5 + 100, rtol=1e-4)
    np.testing.assert_allclose(a.predict_proba(Xte), b.predict_proba(Xte * 5.0 + 100.0), atol=2e-3)


@both_modes
def test_unequal_lengths_padding_never_changes_a_prediction(vowels, tiny):
    Xtr, ytr, Xte, _ = vowels
    assert len({x.shape[1] for x in Xtr}) > 1
    clf = unicornn.UnICORNNClassifier(random_state=0, **tiny).fit(Xtr, ytr)
    assert not clf.equal_length_ and clf.n_timepoints_ == max(x.shape[1] for x in Xtr)
    together = clf.predict_proba(Xte)  # padded to the longest case of the batch
    alone = np.concatenate([clf.predict_proba([x]) for x in Xte])  # no padding
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    # the same, with the LSTM baseline (packed sequences)
    lstm = unicornn.UnICORNNClassifier(model="lstm", random_state=0, **tiny).fit(Xtr, ytr)
    np.testing.assert_allclose(
        lstm.predict_proba(Xte), np.concatenate([lstm.predict_proba([x]) for x in Xte]), rtol=1e-5, atol=1e-6
    )


@both_modes
def test_equal_length_list_equals_the_array(gunpoint, tiny):
    Xtr, ytr, Xte, _ = gunpoint
    clf = unicornn.UnICORNNClassifier(random_state=0, **tiny).fit(Xtr, ytr)
    np.testing.assert_allclose(clf.predict_proba(list(Xte)), clf.predict_proba(Xte), rtol=1e-6)
    np.testing.assert_allclose(
        clf.predict_proba(Xte[:, 0, :]), clf.predict_proba(Xte), rtol=1e-6
    )  # 2-D: one channel


def test_sklearn_contract_clone_params_pipeline_cv_grid(gunpoint):
    Xtr, ytr, _, _ = gunpoint
    clf = unicornn.UnICORNNClassifier(random_state=0, **TINY)
    params = clf.get_params()
    assert params["hidden_size"] == 8 and params["dt"] == "auto" and params["memory"] == "standard"
    clf.set_params(hidden_size=6)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and not hasattr(twin, "model_")
    pipe = make_pipeline(FunctionTransformer(lambda X: X * 2.0), clone(clf))
    assert pipe.fit(Xtr, ytr).predict(Xtr).shape == (len(Xtr),)
    scores = cross_val_score(clone(clf), Xtr, ytr, cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    grid = GridSearchCV(clone(clf), {"hidden_size": [4, 6]}, cv=2).fit(Xtr, ytr)
    assert grid.best_params_["hidden_size"] in (4, 6) and hasattr(grid.best_estimator_, "model_")


@both_modes
def test_pickle_roundtrip(gunpoint, tmp_path, tiny):
    Xtr, ytr, Xte, _ = gunpoint
    clf = unicornn.UnICORNNClassifier(random_state=0, **tiny).fit(Xtr, ytr)
    path = tmp_path / "clf.pkl"
    path.write_bytes(pickle.dumps(clf))
    again = pickle.loads(path.read_bytes())
    np.testing.assert_array_equal(again.predict_proba(Xte), clf.predict_proba(Xte))


@both_modes
def test_regressor_in_target_units(tiny):
    Xtr, ytr, Xte, yte = _bundled("Covid3Month")
    Xtr, ytr = Xtr[:40], ytr[:40].astype(float)
    reg = unicornn.UnICORNNRegressor(random_state=0, **tiny).fit(Xtr, ytr * 1000.0)
    assert reg.y_mean_ == pytest.approx(ytr.mean() * 1000.0)
    pred = reg.predict(Xte[:10])
    assert pred.shape == (10,) and np.isfinite(pred).all()
    assert abs(pred.mean() - ytr.mean() * 1000.0) < 5 * ytr.std() * 1000.0  # in the target's units
    assert np.isfinite(reg.score(Xte[:10], yte[:10].astype(float) * 1000.0))


def test_baselines_lean_memory_and_no_validation(gunpoint):
    Xtr, ytr, Xte, _ = gunpoint
    for model in ("lstm", "gru"):
        assert unicornn.UnICORNNClassifier(model=model, random_state=0, **TINY).fit(Xtr, ytr).predict(
            Xte
        ).shape == (20,)
    std = unicornn.UnICORNNClassifier(random_state=0, **TINY).fit(Xtr, ytr)
    lean = unicornn.UnICORNNClassifier(random_state=0, memory="lean", **TINY).fit(Xtr, ytr)
    np.testing.assert_allclose(lean.predict_proba(Xte), std.predict_proba(Xte), atol=1e-4)
    full = unicornn.UnICORNNClassifier(random_state=0, validation_fraction=0.0, **TINY).fit(Xtr, ytr)
    assert full.best_epoch_ == full.n_epochs_ == 3


@both_modes
def test_bidirectional(gunpoint, tiny):
    """A bidirectional stack: its model runs both directions, and padding still never changes a prediction."""
    Xtr, ytr, Xte, _ = gunpoint
    est = unicornn.UnICORNNClassifier(random_state=0, bidirectional=True, **tiny).fit(Xtr, ytr)
    assert est.model_.rnn.bidirectional and est.predict_proba(Xte).shape == (len(Xte), 2)
    ragged = [x[:, : 30 + 5 * i] for i, x in enumerate(Xte[:6])]
    alone = np.concatenate([est.predict_proba([x]) for x in ragged])
    np.testing.assert_allclose(est.predict_proba(ragged), alone, atol=1e-5)
    with pytest.raises(ValueError, match="lean"):
        unicornn.UnICORNNClassifier(bidirectional=True, memory="lean", **tiny).fit(Xtr, ytr)


def test_early_stopping(gunpoint):
    Xtr, ytr, _, _ = gunpoint
    # a learning rate too small to change a float32 weight: no epoch improves on the first one
    clf = unicornn.UnICORNNClassifier(random_state=0, **dict(TINY, n_epochs=30), patience=2, lr=1e-30).fit(
        Xtr, ytr
    )
    assert (clf.best_epoch_, clf.n_epochs_) == (1, 3)
    clf = unicornn.UnICORNNClassifier(random_state=0, **dict(TINY, n_epochs=30), patience=None, lr=1e-30).fit(
        Xtr, ytr
    )
    assert (clf.best_epoch_, clf.n_epochs_) == (1, 30)


def test_verbose_prints_epochs(gunpoint, capsys):
    Xtr, ytr, _, _ = gunpoint
    unicornn.UnICORNNClassifier(random_state=0, verbose=True, **TINY).fit(Xtr, ytr)
    err = capsys.readouterr().err
    assert err.count("train_loss") == 3 and "valid_accuracy" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@both_modes
def test_cuda_device(gunpoint, tiny):
    Xtr, ytr, Xte, _ = gunpoint
    clf = unicornn.UnICORNNClassifier(random_state=0, **dict(tiny, device="cuda", backend="auto")).fit(
        Xtr, ytr
    )
    assert clf.predict(Xte).shape == (20,) and next(clf.model_.parameters()).device.type == "cpu"


def test_bad_inputs(gunpoint):
    Xtr, ytr, _, _ = gunpoint
    clf = unicornn.UnICORNNClassifier(random_state=0, **TINY)
    with pytest.raises(ValueError, match="3-D array"):
        clf.fit(Xtr[None], ytr)
    with pytest.raises(ValueError, match="3-D array"):
        clf.fit(Xtr[:, 0, 0], ytr)
    with pytest.raises(ValueError, match="y has 23 entries but X has 24 cases"):
        clf.fit(Xtr, ytr[:-1])
    with pytest.raises(ValueError, match="single class"):
        clf.fit(Xtr, np.full(len(Xtr), ytr[0]))
    bad = Xtr.copy()
    bad[5, 0, 7] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in case 5"):
        clf.fit(bad, ytr)
    with pytest.raises(ValueError, match="different channel counts"):
        clf.fit([np.zeros((1, 5)), np.zeros((2, 5))], ytr[:2])
    with pytest.raises(ValueError, match="must be a 2-D"):
        clf.fit([np.zeros(5), np.zeros(5)], ytr[:2])
    with pytest.raises(ValueError, match="validation_fraction"):
        unicornn.UnICORNNClassifier(validation_fraction=1.5, **TINY).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="patience must be >= 1"):
        unicornn.UnICORNNClassifier(patience=0, **TINY).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="dt must be 'auto'"):
        unicornn.UnICORNNClassifier(dt="fast", **TINY).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="device must be"):
        unicornn.UnICORNNClassifier(**dict(TINY, device="tpu")).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="memory='lean' needs model='unicornn'"):
        unicornn.UnICORNNClassifier(model="lstm", memory="lean", **TINY).fit(Xtr, ytr)
    fitted = clf.fit(Xtr, ytr)
    with pytest.raises(ValueError, match="2 channels, the estimator was fitted with 1"):
        fitted.predict(np.zeros((3, 2, 60)))
    with pytest.raises(ValueError, match="hold numbers"):
        unicornn.UnICORNNRegressor(**TINY).fit(Xtr, ["a"] * len(Xtr))
    with pytest.raises(ValueError, match="training must be one of full, readout, got 'ridge'"):
        unicornn.UnICORNNClassifier(**dict(TINY_READOUT, training="ridge")).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="readout must be 'pool' or None, got 'last'"):
        unicornn.UnICORNNClassifier(readout="last", **TINY_READOUT).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="validation_fraction"):  # checked in both modes
        unicornn.UnICORNNClassifier(validation_fraction=1.5, **TINY_READOUT).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="input_spread"):
        unicornn.UnICORNNClassifier(input_spread=0.5, **TINY_READOUT).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="non-finite on the training data: use a smaller dt or alpha"):
        unicornn.UnICORNNClassifier(alpha=1e6, **TINY_READOUT).fit(Xtr, ytr)


def test_as_cases_formats():
    cases, lengths = as_cases(np.zeros((4, 3, 7)))
    assert cases.shape == (4, 7, 3) and lengths.tolist() == [7] * 4
    cases, lengths = as_cases([np.zeros((2, 5)), np.zeros((2, 9))])
    assert isinstance(cases, list) and cases[1].shape == (9, 2) and lengths.tolist() == [5, 9]


def test_import_without_sklearn():
    """``import unicornn`` works without scikit-learn; the estimators then name the extra to install."""
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import unicornn\n"
        "try:\n    unicornn.UnICORNNClassifier\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ERR" in out and "unicornn[sklearn]" in out


def test_pipeline_with_an_aeon_transformer():
    """The docs' advice for data whose cases differ in scale: aeon's per-case Normalizer in front."""
    normalizer = pytest.importorskip("aeon.transformations.collection").Normalizer
    Xtr, ytr, Xte, _ = _bundled("Covid3Month")
    pipe = make_pipeline(normalizer(), unicornn.UnICORNNRegressor(random_state=0, **TINY))
    pred = pipe.fit(Xtr[:30], ytr[:30].astype(float)).predict(Xte[:5])
    assert pred.shape == (5,) and np.isfinite(pred).all()


@pytest.mark.parametrize("spread", [1.0, 3.0])
def test_spread_scales_spreads_input_gains_and_biases(spread):
    """input_spread s: every unit's input weights times one gain in [1/s, s] (log-uniform), biases U(-1, 1);
    s = 1 leaves the input weights and biases as they were."""
    torch.manual_seed(0)
    rnn = unicornn.UnICORNN(3, 2000)
    before = rnn.weight_ih_l0.detach().clone()
    spread_scales(rnn, 50, spread, torch.Generator().manual_seed(0))
    gain = (rnn.weight_ih_l0.detach() / before).double()
    torch.testing.assert_close(gain, gain[:, :1].expand_as(gain), rtol=1e-6, atol=0)  # one gain per unit
    if spread == 1.0:
        assert torch.equal(rnn.weight_ih_l0, before) and torch.count_nonzero(rnn.bias_ih_l0) == 0
    else:
        logs = torch.log(gain[:, 0]) / np.log(spread)  # uniform in [-1, 1]
        assert logs.min() >= -1 - 1e-6 and logs.max() <= 1 + 1e-6 and abs(float(logs.mean())) < 0.1
        bias = rnn.bias_ih_l0.detach()
        assert bias.abs().max() <= 1 and bias.std() > 0.5
    with pytest.raises(ValueError, match="input_spread"):
        spread_scales(rnn, 50, 0.5, torch.Generator().manual_seed(0))


def test_readout_spreads_time_steps_over_every_scale(gunpoint):
    """training="readout": each unit's time step dt * sigmoid(c) is drawn log-uniformly in [1/n, 0.9]."""
    Xtr, ytr, _, _ = gunpoint
    clf = unicornn.UnICORNNClassifier(random_state=0, **dict(TINY_READOUT, hidden_size=512)).fit(Xtr, ytr)
    steps = clf.model_.rnn.effective_time_steps().double().flatten()
    assert steps.min() >= 1 / 60 * (1 - 1e-5) and steps.max() <= 0.9 * (1 + 1e-5)
    logs = torch.log(steps)
    lo, hi = np.log(1 / 60), np.log(0.9)
    # log-uniform: a quarter of the units in each quarter of the log range (512 draws: within 0.1)
    counts = torch.histc(logs, bins=4, min=lo, max=hi) / len(logs)
    assert torch.all((counts - 0.25).abs() < 0.1), counts


@pytest.mark.parametrize("n_classes", [2, 3])
def test_readout_is_ridge_on_standardised_pooled_states(gunpoint, n_classes):
    """The fitted head equals scikit-learn's RidgeClassifierCV on the pooled states, standardised with the
    training statistics (folded into the head), and clamps features to the training range."""
    from sklearn.linear_model import RidgeClassifierCV

    Xtr, ytr, Xte, _ = gunpoint if n_classes == 2 else _bundled("JapaneseVowels")
    if n_classes == 3:  # 15 cases of each of 3 classes (unequal lengths)
        keep = np.concatenate([np.flatnonzero(ytr == c)[:15] for c in np.unique(ytr)[:3]])
        Xtr, ytr, Xte = [Xtr[i] for i in keep], ytr[keep], Xte[:20]
    assert len(np.unique(ytr)) == n_classes
    clf = unicornn.UnICORNNClassifier(random_state=0, **TINY_READOUT).fit(Xtr, ytr)
    model = clf.model_.double()

    def pooled(X):
        cases, lengths = as_cases(X)
        out = []
        for c in cases:  # one case at a time: no padding
            u = torch.as_tensor((c - clf.channel_mean_) / clf.channel_std_, dtype=torch.float64)[:, None, :]
            out.append(pool_over_time(model.rnn(u)[0], None)[0])
        return torch.stack(out).detach().numpy()

    Ftr, Fte = pooled(Xtr), pooled(Xte)
    mean, std = Ftr.mean(0), Ftr.std(0)
    ridge = RidgeClassifierCV(alphas=RIDGE_ALPHAS).fit((Ftr - mean) / std, ytr)
    assert ridge.alpha_ == clf.ridge_alpha_
    clipped = np.clip(Fte, Ftr.min(0), Ftr.max(0))
    decision = ridge.decision_function((clipped - mean) / std)
    with torch.no_grad():
        logits = model.head(torch.as_tensor(Fte)).numpy()
    if n_classes == 2:
        np.testing.assert_allclose(
            logits[:, 1] - logits[:, 0], decision, rtol=2e-3, atol=2e-3
        )  # float32 fit, float64 check
    else:
        np.testing.assert_allclose(logits, decision, rtol=2e-3, atol=2e-3)  # float32 fit, float64 check


def test_readout_does_not_extrapolate_beyond_the_training_range():
    """Inputs far outside the training data give predictions inside what the clamped features allow: a
    regressor's prediction stays within a few target spreads instead of growing with the input."""
    Xtr, ytr, Xte, _ = _bundled("Covid3Month")
    Xtr, ytr = Xtr[:40], ytr[:40].astype(float)
    reg = unicornn.UnICORNNRegressor(random_state=0, **TINY_READOUT).fit(Xtr, ytr)
    wild = reg.predict(Xte[:5] * 1e4)
    assert np.isfinite(wild).all()
    head = reg.model_.head[1]
    bound = np.abs(head.weight.detach().numpy()).sum() * max(
        np.abs(reg.model_.head[0].low.numpy()).max(), np.abs(reg.model_.head[0].high.numpy()).max()
    )
    assert np.all(np.abs((wild - reg.y_mean_) / reg.y_std_) <= bound + abs(float(head.bias)) + 1e-6)
