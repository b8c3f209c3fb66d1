"""Pooling: winner-take-all (MaxPool) is the gradient; AveragePool / GlobalAveragePool are Norm."""
import numpy as np
import pytest
from reference import explain_custom, jacobian_fd, rel_l2, run_reference, single_op_model, stab


MAXPOOLS = {
    "k2_s2": ((2, 3, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "k3_s2_p1_overlapping": ((2, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "k3_s1_overlapping": ((1, 2, 5, 5), dict(kernel_shape=[3, 3], strides=[1, 1])),
    "ceil_mode": ((2, 2, 7, 7), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "same_upper": ((1, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "dilated": ((1, 2, 7, 7), dict(kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2])),
    "1d": ((2, 3, 9), dict(kernel_shape=[3], strides=[2])),
    "3d": ((1, 2, 4, 4, 4), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
}


@pytest.mark.parametrize("case", list(MAXPOOLS))
def test_max_pool_sends_relevance_to_winners(case, rng):
    shape, attrs = MAXPOOLS[case]
    model = single_op_model("MaxPool", shape, {}, attrs)
    x = rng.normal(size=shape).astype(np.float32)
    R = rng.normal(size=(shape[0], run_reference(model, x[:1]).shape[1])).astype(np.float32)
    got = explain_custom(model, x, R)
    for i in range(shape[0]):
        J = jacobian_fd(model, x[i:i + 1])       # 0/1 winners: exact for distinct values
        want = (J.T @ R[i]).reshape(shape[1:])
        assert rel_l2(got[i], want) < 1e-6
    assert np.allclose(got.sum(axis=tuple(range(1, got.ndim))), R.sum(axis=1), rtol=1e-5)


AVGPOOLS = {  # case -> (shape, AveragePool attributes; None: GlobalAveragePool)
    "global": ((2, 3, 5, 4), None),
    "k2_s2": ((2, 3, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "k3_s2_p1_exclude_pad": ((2, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "k3_s2_p1_include_pad": ((2, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                 count_include_pad=1)),
    "ceil_mode": ((1, 2, 7, 7), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "ceil_mode_pad_include": ((1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                  ceil_mode=1, count_include_pad=1)),
    "1d": ((2, 3, 9), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "3d": ((1, 2, 4, 4, 4), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
}


def _norm_reference(model, x, R, eps=1e-6):
    out = []
    for i in range(len(x)):
        J = jacobian_fd(model, x[i:i + 1])
        y = run_reference(model, x[i:i + 1])[0]
        out.append(x[i].ravel() * (J.T @ (R[i] / stab(y, eps))))
    return np.stack(out).reshape(x.shape)


@pytest.mark.parametrize("case", list(AVGPOOLS))
def test_average_pool_is_norm(case, rng):
    shape, attrs = AVGPOOLS[case]
    model = single_op_model("GlobalAveragePool", shape, {}, {}) if attrs is None else single_op_model(
        "AveragePool", shape, {}, attrs)
    x = rng.normal(size=shape).astype(np.float32)
    y = run_reference(model, x)
    R = (y * rng.normal(size=y.shape)).astype(np.float32)
    assert rel_l2(explain_custom(model, x, R), _norm_reference(model, x, R)) < 1e-5


def test_global_max_pool_sends_relevance_to_winners(rng):
    shape = (2, 3, 4, 5)
    model = single_op_model("GlobalMaxPool", shape, {}, {})
    x = rng.normal(size=shape).astype(np.float32)
    R = rng.normal(size=(2, 3)).astype(np.float32)
    got = explain_custom(model, x, R)
    for i in range(2):
        J = jacobian_fd(model, x[i:i + 1])
        assert rel_l2(got[i], (J.T @ R[i]).reshape(shape[1:])) < 1e-6
