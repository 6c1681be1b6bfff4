"""The rule table of the channel tracer: how each torch op moves channel labels (see ``trace.py``).

Categories, by the op's ``__name__``:
* shape ops (view, reshape, permute, cat, split, getitem, expand, repeat, ...) run on the label tensors
  themselves, so offsets, strides and head splits come out exactly;
* element-wise ops join the atoms that meet at each output element (a residual add couples its terms);
* reductions and softmax-like ops join every atom of each reduced slice (a LayerNorm over the channels
  joins them all: its channels cannot be removed one by one);
* linear/conv/embedding/recurrent ops with a parameter weight consume their input channels and produce
  fresh atoms; grouped convolutions join each group's inputs and outputs;
* products of two activations (attention) join each output element's row and column: a head's
  query, key and value channels become one unit, GQA query heads join the key/value head they share.
An op with no rule that meets a tracked atom marks it unusable, naming the op: never guessed.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from .._tree import tensor_leaves
from .trace import UNTRACKED, ChannelTrace, atoms_in, compact, shrink

Rule = Callable[[ChannelTrace, str, Any, tuple, dict, Any], None]

SHAPE = {
    "view", "reshape", "permute", "transpose", "transpose_", "flatten", "unflatten", "squeeze",
    "unsqueeze", "squeeze_", "unsqueeze_", "expand", "expand_as", "view_as", "reshape_as",
    "repeat", "repeat_interleave", "split", "split_with_sizes", "chunk", "tensor_split", "unbind",
    "narrow", "select", "__getitem__", "index_select", "gather", "take_along_dim", "flip", "roll",
    "movedim", "moveaxis", "swapaxes", "swapdims", "t", "T", "mT", "mH", "H", "unfold",
    "masked_select", "tile", "broadcast_to", "diagonal",
}  # fmt: skip
LISTS = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack"}
IDENTITY = {
    "to", "float", "half", "double", "bfloat16", "type", "type_as", "contiguous", "clone", "detach",
    "cpu", "cuda", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "requires_grad_", "data", "detach_", "__deepcopy__", "pin_memory",
}  # fmt: skip
ELEMENTWISE = {
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__",
    "__isub__", "rsub", "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_",
    "__truediv__", "__rtruediv__", "__itruediv__", "true_divide", "__floordiv__", "floor_divide",
    "neg", "__neg__", "negative", "pow", "pow_", "__pow__", "__rpow__", "exp", "exp_", "expm1", "log",
    "log_", "log1p", "log2", "log10", "sqrt", "rsqrt", "abs", "__abs__", "sin", "cos", "tan", "tanh",
    "tanh_", "sigmoid", "sigmoid_", "relu", "relu_", "relu6", "gelu", "silu", "mish", "elu", "elu_",
    "selu", "celu", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid",
    "softplus", "softsign", "tanhshrink", "logsigmoid", "threshold", "clamp", "clamp_", "clip",
    "clamp_min", "clamp_max", "where", "maximum", "minimum", "fmax", "fmin", "masked_fill",
    "masked_fill_", "addcmul", "addcdiv", "lerp", "erf", "erfc", "reciprocal", "square", "floor",
    "ceil", "round", "trunc", "sign", "sgn", "nan_to_num", "float_power", "eq", "ne", "gt", "lt", "ge",
    "le", "__eq__", "__ne__", "__gt__", "__lt__", "__ge__", "__le__", "logical_and", "logical_or",
    "logical_not", "__and__", "__or__", "__invert__", "bitwise_and", "bitwise_or", "isnan",
    "isinf", "isfinite", "tril", "triu", "tril_", "triu_", "sinh", "cosh", "atan", "asin", "acos",
    "frac", "fmod", "remainder", "__mod__", "square_", "xlogy", "hypot", "atan2", "exp2", "sinc",
    "gelu_", "silu_", "rrelu",
}  # fmt: skip
# reductions: output elements depend on the whole slice along ``dim`` (argument position, default)
REDUCE = {
    "sum": (1, None), "mean": (1, None), "amax": (1, None), "amin": (1, None), "prod": (1, None),
    "norm": (2, None), "var": (1, None), "std": (1, None), "var_mean": (1, None),
    "std_mean": (1, None), "logsumexp": (1, None), "argmax": (1, None), "argmin": (1, None),
    "all": (1, None), "any": (1, None), "count_nonzero": (1, None), "nansum": (1, None),
    "nanmean": (1, None), "max": (1, None), "min": (1, None), "median": (1, None),
    "softmax": (1, None), "log_softmax": (1, None), "_softmax": (1, None), "softmin": (1, None),
    "cumsum": (1, None), "cumprod": (1, None), "cummax": (1, None), "logcumsumexp": (1, None),
    "normalize": (2, 1), "vector_norm": (2, None), "linalg_vector_norm": (2, None), "sort": (1, -1), "topk": (2, -1),
    "argsort": (1, -1), "kthvalue": (2, -1), "aminmax": (1, None),
    "cross_entropy": (None, None), "nll_loss": (None, None), "mse_loss": (None, None),
    "l1_loss": (None, None), "binary_cross_entropy_with_logits": (None, None),
    "kl_div": (None, None), "smooth_l1_loss": (None, None), "cosine_similarity": (2, 1),
}  # fmt: skip
UNTRACKED_OUT = {
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "randint_like", "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "fill_",
    "zero_", "size", "dim", "numel", "__len__", "item", "tolist", "shape", "dtype", "device",
    "is_floating_point", "is_complex", "element_size", "stride", "data_ptr", "__bool__",
    "__index__", "__int__", "__float__", "__format__", "__repr__", "ndim", "is_contiguous",
    "storage_offset", "nelement", "numpy", "get_device", "__iter__", "__hash__", "__contains__",
    "equal", "allclose", "isclose", "is_nonzero", "ndimension", "requires_grad", "grad_fn", "is_leaf",
}  # fmt: skip
POOL = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "lp_pool1d",
    "lp_pool2d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
    "_adaptive_max_pool2d", "fractional_max_pool2d",
}  # fmt: skip


def _flat(args: tuple, kwargs: dict) -> list[Tensor]:
    return tensor_leaves((args, kwargs))


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _set_outputs(t: ChannelTrace, out: Any, labels: Any) -> None:
    for o, lab in zip(tensor_leaves(out), tensor_leaves(labels)):
        if tuple(o.shape) == tuple(lab.shape):
            t.set(o, lab)


def _broadcast_all(t: ChannelTrace, out: Tensor, labels: Tensor | None) -> None:
    if labels is not None:
        t.set(out, torch.broadcast_to(labels, out.shape))


# -- categories ---------------------------------------------------------------------------------------
def _on_cpu(args: tuple) -> tuple:
    """Index tensors beside the labels (which live on the CPU), moved there too."""
    out = []
    for a in args:
        if isinstance(a, Tensor):
            a = a.cpu()
        elif isinstance(a, (tuple, list)):
            a = type(a)(_on_cpu(tuple(a)))
        out.append(a)
    return tuple(out)


def shape_op(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    if name in LISTS:
        seq = args[0] if args else kwargs.get("tensors")
        new = ([t.lab_or_untracked(x) for x in seq],) + _on_cpu(args[1:])
        kw = {k: v for k, v in kwargs.items() if k != "tensors"}
    else:
        new = (t.lab_or_untracked(args[0]),) + _on_cpu(args[1:])
        kw = kwargs
    try:
        labels = func(*new, **kw)
    except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
        # labels stored once along constant dims (stride 0) may not ``view`` where the real tensor can
        new = tuple(
            [x.contiguous() for x in a] if isinstance(a, list) else a.contiguous() if i == 0 else a
            for i, a in enumerate(new)
        )
        try:
            labels = func(*new, **kw)
        except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
            return _unknown(
                t, f"{name} (could not be applied to channel labels)", args, kwargs, out
            )
    _set_outputs(t, out, labels)


def identity(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    lab = t.lab(args[0]) if args else None
    if isinstance(out, Tensor) and lab is not None and tuple(out.shape) == tuple(lab.shape):
        t.set(out, lab)


def elementwise(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    if not isinstance(out, Tensor):
        return
    ins = [x for x in _flat(args, kwargs)]
    ins_l = [x for x in ins if t.lab(x) is not None]
    labs = [t.lab(x) for x in ins_l]
    if not labs:
        return
    try:
        # one position along the dims where every label is constant (batch, sequence)
        labs = shrink(*[torch.broadcast_to(lab, out.shape) for lab in labs])
    except RuntimeError:
        return _unknown(t, f"{name} (broadcast not understood)", args, kwargs, out)
    acts = [torch.where(lab >= 0, lab, UNTRACKED) for lab in labs]
    o = torch.stack(acts).amax(0)
    for a in acts:
        t.unify(a, o)
    for lab in labs:
        t.align(lab, o)
    # where no channel meets, a parameter element carries on (a class token beside the patches): it is
    # sliced with the channel it later meets
    # (labels that travelled through ops first: in ``cat([cls, x]) + pos`` the class token carries on)
    order = sorted(range(len(labs)), key=lambda i: t.param_name(ins_l[i]) is not None)
    free = o == UNTRACKED
    for i in order:
        o = torch.where((o == UNTRACKED) & (labs[i] <= -2), labs[i], o)
    # parameter elements combined with no channel in between (a frozen BatchNorm's weight times
    # rsqrt(running_var)) go with whatever channel the result meets later
    for lab in labs:
        t.link(torch.where(free, lab, UNTRACKED), torch.where(free, o, UNTRACKED))
    # a tensor the model makes in the forward (neither traced nor a parameter) spanning a dim along
    # which channels vary is not sliced with them: those channels must go together or not at all
    for x in ins:
        if t.lab(x) is None and x.dim() and isinstance(out, Tensor):
            t.spanning(name, x, o, out.shape)
    t.set(out, o.expand(out.shape))


def _dims(x: Tensor, dim: Any) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(x.dim()))
    if isinstance(dim, (list, tuple)):
        return tuple(d % max(x.dim(), 1) for d in dim)
    return (dim % max(x.dim(), 1),)


def join_over(t: ChannelTrace, lab: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Join every atom of each slice along ``dims``; the slice's atom, keepdim shape."""
    lab = compact(lab)
    for d in range(lab.dim()):  # constant along d: one position stands for all
        if lab.shape[d] > 1 and lab.stride(d) == 0:
            lab = lab.narrow(d, 0, 1)
    acts = torch.where(lab >= 0, lab, UNTRACKED)
    if not dims or lab.dim() == 0:
        return acts
    r = acts.amax(dim=dims, keepdim=True)
    t.unify(acts, r)
    t.align(lab, r)
    return r


def reduction(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0] if args else kwargs.get("input")
    pos, default = REDUCE[name]
    if name in ("max", "min") and len(args) > 1 and isinstance(args[1], Tensor):
        return elementwise(t, name, func, args, kwargs, out)
    lab = t.lab(x)
    if lab is None:
        return
    if pos is None:
        dim = None
    else:
        dim = _arg(args, kwargs, pos, "dim", default)
        if name == "norm" and "dim" not in kwargs and len(args) <= 2:
            dim = None
    r = join_over(t, lab, _dims(x, dim))
    for o in tensor_leaves(out):
        try:
            t.set(o, torch.broadcast_to(r, o.shape))
        except RuntimeError:  # the reduced dims are gone
            squeezed = r.squeeze(_dims(x, dim)) if x.dim() else r
            try:
                t.set(o, torch.broadcast_to(squeezed, o.shape))
            except RuntimeError:
                pass


def setitem(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, idx, v = args[0], args[1], args[2]
    if t.lab(x) is None and t.lab(v) is None:
        return
    lab = t.lab_or_untracked(x).clone()
    (idx,) = _on_cpu((idx,))
    lab[idx] = t.lab(v) if t.lab(v) is not None else UNTRACKED
    t.set(x, lab)


def copy_(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.lab(args[1])
    if src is not None:
        t.set(args[0], torch.broadcast_to(src, args[0].shape).clone())
    elif t.lab(args[0]) is not None:
        t.set(args[0], torch.full(args[0].shape, UNTRACKED, dtype=torch.long))


def untracked_out(
    t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any
) -> None:
    if name in ("fill_", "zero_") and args and t.lab(args[0]) is not None:
        t.set(args[0], torch.full(args[0].shape, UNTRACKED, dtype=torch.long))


def _unknown(t: ChannelTrace, why: str, args: tuple, kwargs: dict, out: Any) -> None:
    a = t.poison(why, *_flat(args, kwargs))
    if a is not None:
        for o in tensor_leaves(out):
            if o.is_floating_point():
                t.set(o, a.expand(o.shape))


def pool(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0] if args else kwargs.get("input")
    if t.lab(x) is None:
        return
    digits = [c for c in name if c.isdigit()]
    nd = int(digits[0]) if digits else x.dim() - 2
    cdim = x.dim() - nd - 1
    rep = t.channel_atoms(x, cdim)  # [C]
    for o in tensor_leaves(out):
        shape = [1] * o.dim()
        shape[cdim] = rep.numel()
        t.set(o, rep.view(shape).expand(o.shape))


# -- contractions with a parameter --------------------------------------------------------------------
def _param_contract(
    t: ChannelTrace, x: Tensor, xdim: int, W: Tensor, win: int, wout: int, out: Tensor, odim: int
) -> Tensor | None:
    """x's channel dim ``xdim`` meets W's dim ``win``; the output's dim ``odim`` is W's dim ``wout``."""
    atoms_in = t.channel_atoms(x, xdim)
    n_out = W.shape[wout]
    a_out = t.fresh(n_out)
    pname = t.param_name(W)
    wlab = t.lab(W)
    if pname is not None:
        t.consume(pname, win, atoms_in)
        t.produce(pname, wout, a_out)
        t.weight_ops.append((pname, out.numel() // max(n_out, 1)))
    elif wlab is not None and bool((wlab <= -2).all()):
        # a weight moved out of a parameter (a chunk of a fused qkv weight): rows/columns resolved later
        t.derived.append((wlab, win, atoms_in, "consumer"))
        t.derived.append((wlab, wout, a_out, "producer"))
        names, _ = t.param_of(wlab.reshape(-1)[:1])
        if W.numel() == t.tensors[names[0]].numel():  # the whole parameter, transposed or viewed
            t.weight_ops.append((names[0], out.numel() // max(n_out, 1)))
    else:
        t.poison("a product with a weight computed in the forward", x)
        return None
    shape = [1] * out.dim()
    shape[odim] = n_out
    labels = a_out.view(shape).expand(out.shape)
    t.set(out, labels)
    return a_out


def _bias(t: ChannelTrace, b: Any, a_out: Tensor | None) -> None:
    if b is None or a_out is None or not isinstance(b, Tensor):
        return
    name = t.param_name(b)
    if name is not None and b.dim() == 1:
        t.produce(name, 0, a_out)
    elif (lab := t.lab(b)) is not None and lab.dim() == 1 and bool((lab <= -2).all()):
        t.derived.append((lab, 0, a_out, "producer"))


def linear(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, W = args[0], _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    if t.is_tracked(W):
        return pair(t, x, W.mT, out, name)
    a = _param_contract(t, x, -1, W, 1, 0, out, out.dim() - 1)
    _bias(t, b, a)


def matmul(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    A, B = args[0], args[1]
    if name == "__rmatmul__":
        A, B = B, A
    if B.dim() == 2 and not t.is_tracked(B) and t.lab(B) is not None:
        _param_contract(t, A, -1, B, 0, 1, out, out.dim() - 1)
    elif A.dim() == 2 and not t.is_tracked(A) and t.lab(A) is not None:
        _param_contract(t, B, -2, A, 1, 0, out, out.dim() - 2)
    else:
        pair(t, A, B, out, name)


def addmm(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    bias, A, B = args[0], args[1], args[2]
    if name == "addmm" and not t.is_tracked(B) and t.lab(B) is not None:
        a = _param_contract(t, A, -1, B, 0, 1, out, 1)
        _bias(t, bias, a)
        return
    pair(t, A, B, out, name)
    if t.lab(bias) is not None and isinstance(out, Tensor):
        o = t.lab(out)
        lab = torch.broadcast_to(t.lab(bias), out.shape)
        if o is None:
            t.set(out, torch.where(lab >= 0, lab, UNTRACKED))
        else:
            t.unify(lab, o)
            t.align(lab, o)


def pair_labels(t: ChannelTrace, LA: Tensor, LB: Tensor, K: int) -> Tensor:
    """Labels of A @ B from A's [..., M, K] and B's [..., K, N] labels, joining what meets."""
    rA = join_over(t, LA, (LA.dim() - 1,))  # [..., M, 1]
    rB = join_over(t, LB, (LB.dim() - 2,))  # [..., 1, N]
    # every (row m, column n) pair meets in the output: per batch slice, all tracked rows and
    # columns are one unit; joined through each side's representative, O(M + N) not O(M N)
    ra = rA.amax(-2, keepdim=True)  # [..., 1, 1]
    rb = rB.amax(-1, keepdim=True)
    t.unify(rA, torch.where(rA >= 0, rb, UNTRACKED))
    t.unify(rB, torch.where(rB >= 0, ra, UNTRACKED))
    t.unify(ra, rb)
    full = torch.broadcast_shapes(LA.shape[:-1] + (1,), LB.shape[:-2] + (1, LB.shape[-1]))
    a, b = shrink(compact(rA.expand(full)), compact(rB.expand(full)))
    o = torch.where(a >= 0, a, b)
    tracked = o[o >= 0]
    if tracked.numel():
        counts = torch.bincount(tracked) * (math.prod(full) // o.numel())
        atoms = counts.nonzero().flatten()
        t.heads.update(atoms.tolist())
        t.pair_ops.append((atoms, counts[atoms] * K))
    return o.expand(full)


def pair(t: ChannelTrace, A: Tensor, B: Tensor, out: Any, name: str = "matmul") -> None:
    if not isinstance(out, Tensor):
        return
    LA, LB = t.lab_or_untracked(A), t.lab_or_untracked(B)
    if A.dim() == 1:
        LA = LA.unsqueeze(0)
    if B.dim() == 1:
        LB = LB.unsqueeze(-1)
    o = pair_labels(t, LA, LB, LA.shape[-1])
    t.set(out, o.reshape(out.shape))


def conv(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, W = args[0], _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    transposed = "transpose" in name
    groups = _arg(args, kwargs, 6, "groups", 1)  # position 6 in conv*d and conv_transpose*d
    if transposed:
        if groups != 1:
            return _unknown(t, f"{name} with groups={groups}", args, kwargs, out)
        a = _param_contract(t, x, 1, W, 0, 1, out, 1)
        return _bias(t, b, a)
    if groups == 1:
        a = _param_contract(t, x, 1, W, 1, 0, out, 1)
        return _bias(t, b, a)
    pname = t.param_name(W)
    if pname is None:
        return _unknown(t, f"{name} with a computed weight", args, kwargs, out)
    atoms_in = t.channel_atoms(x, 1)  # [C]
    n_out = W.shape[0]
    a_out = t.fresh(n_out)
    G = groups
    rep = a_out.view(G, n_out // G)[:, :1]  # one atom per convolution group
    t.unify(a_out.view(G, n_out // G), rep)
    t.unify(atoms_in.view(G, -1), rep)
    t.produce(pname, 0, a_out)
    _bias(t, b, a_out)
    t.weight_ops.append((pname, out.numel() // n_out))
    shape = [1] * out.dim()
    shape[1] = n_out
    t.set(out, a_out.view(shape).expand(out.shape))


def embedding(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    idx, W = args[0], _arg(args, kwargs, 1, "weight")
    if t.is_tracked(idx):
        return _unknown(t, "embedding of computed indices", args, kwargs, out)
    pname = t.param_name(W)
    if pname is None:
        return
    a_out = t.fresh(W.shape[1])
    t.produce(pname, 1, a_out)
    t.set(out, a_out.expand(out.shape))


def sdpa(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    q, k, v = args[0], _arg(args, kwargs, 1, "key"), _arg(args, kwargs, 2, "value")
    mask = _arg(args, kwargs, 3, "attn_mask")
    LQ, LK, LV = (t.lab_or_untracked(z) for z in (q, k, v))
    if (
        q.dim() >= 3 and k.shape[-3] != q.shape[-3]
    ):  # GQA: each key/value head serves rep query heads
        rep = q.shape[-3] // k.shape[-3]
        LK = LK.repeat_interleave(rep, dim=-3)
        LV = LV.repeat_interleave(rep, dim=-3)
    scores = pair_labels(t, LQ, LK.mT, LQ.shape[-1])
    if (lm := t.lab(mask)) is not None:
        lm = torch.broadcast_to(lm, scores.shape)
        t.unify(lm, scores)
        scores = torch.where(scores >= 0, scores, lm)
    p = join_over(t, scores, (scores.dim() - 1,)).expand(scores.shape)
    o = pair_labels(t, p, LV, LV.shape[-2])
    t.set(out, o.reshape(out.shape))


def _channel_params(t: ChannelTrace, out: Tensor, cdim: int, *params: Any) -> None:
    """Align per-channel parameters (shape [C]) with the output's channel dim."""
    lab = t.lab(out)
    if lab is None:
        return
    for p in params:
        plab = t.lab(p) if isinstance(p, Tensor) else None
        if plab is None or plab.dim() != 1:
            continue
        shape = [1] * out.dim()
        shape[cdim] = -1
        t.align(plab.view(shape), lab)


def batch_norm(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    if t.lab(x) is None:
        return
    cdim = 1 if x.dim() > 1 else 0
    if name == "instance_norm":
        rep = join_over(t, t.lab(x), tuple(range(2, x.dim())))
        t.set(out, rep.expand(out.shape))
    else:
        t.set(out, t.lab(x))
    _channel_params(t, out, cdim, *[a for a in list(args[1:]) + list(kwargs.values())])


def layer_norm(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    lab = t.lab(x)
    if lab is None:
        return
    shape = _arg(args, kwargs, 1, "normalized_shape")
    k = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
    w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    if name == "rms_norm":
        b = None
    if t.residual:  # per channel; the statistics change when one goes (groups marked inexact)
        o = lab
        t.normed.update(atoms_in(o).tolist())
    else:
        o = join_over(t, lab, tuple(range(x.dim() - k, x.dim()))).expand(x.shape)
    t.set(out, o)
    for p in (w, b):
        if isinstance(p, Tensor) and (plab := t.lab(p)) is not None:
            t.align(torch.broadcast_to(plab, out.shape), o)


def group_norm(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    lab = t.lab(x)
    if lab is None:
        return
    G = _arg(args, kwargs, 1, "num_groups")
    grouped = lab.reshape(lab.shape[0], G, -1)
    r = join_over(t, grouped, (2,)).expand(grouped.shape).reshape(lab.shape)
    t.set(out, r)
    _channel_params(t, out, 1, _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias"))


def prelu(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, w = args[0], args[1]
    lab = t.lab(x)
    if lab is None:
        return
    t.set(out, torch.where(lab >= 0, lab, UNTRACKED))
    if w.numel() > 1:
        _channel_params(t, out, 1 if x.dim() > 1 else 0, w)


def glu(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    lab = t.lab(x)
    if lab is None:
        return
    dim = _arg(args, kwargs, 1, "dim", -1)
    a, b = lab.chunk(2, dim=dim)
    t.unify(a, b)
    t.set(out, torch.where(a >= 0, a, b))


def pad(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    if t.lab(x) is None:
        return
    mode = _arg(args, kwargs, 2, "mode", "constant")
    if mode != "constant":
        return shape_op(t, name, func, (x,) + tuple(args[1:]), kwargs, out)
    padding = _arg(args, kwargs, 1, "pad")
    t.set(out, torch.nn.functional.pad(t.lab(x), padding, value=UNTRACKED))


HANDLERS: dict[str, Rule] = {
    **{n: shape_op for n in SHAPE | LISTS},
    **{n: identity for n in IDENTITY},
    **{n: elementwise for n in ELEMENTWISE},
    **{n: reduction for n in REDUCE},
    **{n: untracked_out for n in UNTRACKED_OUT},
    **{n: pool for n in POOL},
    "__setitem__": setitem,
    "copy_": copy_,
    "linear": linear,
    "matmul": matmul,
    "__matmul__": matmul,
    "__rmatmul__": matmul,
    "mm": matmul,
    "bmm": matmul,
    "addmm": addmm,
    "baddbmm": addmm,
    **{f"conv{d}d": conv for d in (1, 2, 3)},
    **{f"conv_transpose{d}d": conv for d in (1, 2, 3)},
    "embedding": embedding,
    "scaled_dot_product_attention": sdpa,
    "batch_norm": batch_norm,
    "instance_norm": batch_norm,
    "layer_norm": layer_norm,
    "rms_norm": layer_norm,
    "group_norm": group_norm,
    "prelu": prelu,
    "glu": glu,
    "pad": pad,
}


def apply_rule(t: ChannelTrace, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    ins = _flat(args, kwargs)
    if not any(t.lab(x) is not None for x in ins):
        return
    rule = HANDLERS.get(name)
    if rule is not None:
        return rule(t, name, func, args, kwargs, out)
    if any(t.is_tracked(x) for x in ins) and tensor_leaves(out):
        _unknown(t, name or repr(func), args, kwargs, out)
