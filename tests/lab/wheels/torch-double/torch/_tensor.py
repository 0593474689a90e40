"""Tiny tensors of the TEST DOUBLE: flat Python lists with a shape; enough for sanity checks."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable


class dtype:  # noqa: N801 - the real name
    def __init__(self, name: str, is_floating_point: bool) -> None:
        self.name = name
        self.is_floating_point = is_floating_point

    def __repr__(self) -> str:
        return f"torch.{self.name}"


float16 = dtype("float16", True)
bfloat16 = dtype("bfloat16", True)
float32 = dtype("float32", True)
float64 = dtype("float64", True)
int32 = dtype("int32", False)
int64 = dtype("int64", False)


class device:  # noqa: N801 - the real name
    def __init__(self, spec: str | device | int = "cpu", index: int | None = None) -> None:
        if isinstance(spec, device):
            self.type, self.index = spec.type, spec.index
            return
        if isinstance(spec, int):
            spec, index = "cuda", spec
        kind, _, number = str(spec).partition(":")
        if kind not in ("cpu", "cuda"):
            raise RuntimeError(
                f"Expected one of cpu, cuda device type at start of device string: {spec}"
            )
        self.type = kind
        self.index = int(number) if number else index

    def __eq__(self, other: object) -> bool:
        other = device(other) if isinstance(other, str) else other
        return isinstance(other, device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        if self.index is None:
            return f"device(type='{self.type}')"
        return f"device(type='{self.type}', index={self.index})"


def _place(where) -> device:
    d = device(where if where is not None else "cpu")
    if d.type == "cuda":
        from torch import cuda

        d = device("cuda", cuda._check(d.index or 0))
    return d


class Tensor:
    def __init__(self, data: list, shape: tuple[int, ...], kind: dtype, where: device) -> None:
        self._data = data
        self.shape = shape
        self.dtype = kind
        self.device = where

    # --- elementwise arithmetic ---
    def _op(self, other, fn: Callable, reverse: bool = False) -> Tensor:
        if isinstance(other, Tensor):
            if other.device != self.device:
                raise RuntimeError(
                    "Expected all tensors to be on the same device, but found at least two "
                    f"devices, {self.device} and {other.device}!"
                )
            if other.shape != self.shape and other.shape != ():
                raise RuntimeError(
                    f"The size of tensor a ({self.shape}) must match ({other.shape})"
                )
            values = other._data if other.shape else other._data * len(self._data)
        else:
            values = [other] * len(self._data)
        pairs = (
            zip(values, self._data, strict=True)
            if reverse
            else zip(self._data, values, strict=True)
        )
        out = [fn(a, b) for a, b in pairs]
        floating = self.dtype.is_floating_point or any(isinstance(v, float) for v in out)
        kind = self.dtype if self.dtype.is_floating_point or not floating else float32
        return Tensor([float(v) if floating else v for v in out], self.shape, kind, self.device)

    def __add__(self, o):
        return self._op(o, operator.add)

    __radd__ = __add__

    def __sub__(self, o):
        return self._op(o, operator.sub)

    def __rsub__(self, o):
        return self._op(o, operator.sub, reverse=True)

    def __mul__(self, o):
        return self._op(o, operator.mul)

    __rmul__ = __mul__

    def __truediv__(self, o):
        return self._op(o, operator.truediv)

    def __eq__(self, o):  # elementwise, as in torch
        out = self._op(o, lambda a, b: a == b)
        return Tensor([bool(v) for v in out._data], self.shape, dtype("bool", False), self.device)

    __hash__ = object.__hash__

    def __matmul__(self, other: Tensor) -> Tensor:
        """2-D matrix product, the same errors as torch for mismatched shapes or devices."""
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.device != self.device:
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two "
                f"devices, {self.device} and {other.device}!"
            )
        if len(self.shape) != 2 or len(other.shape) != 2:
            raise RuntimeError("the torch double only multiplies 2-D tensors")
        (n, k), (k2, m) = self.shape, other.shape
        if k != k2:
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({n}x{k} and {k2}x{m})")
        a, b = self._data, other._data
        out = [
            sum(a[i * k + j] * b[j * m + c] for j in range(k)) for i in range(n) for c in range(m)
        ]
        floating = self.dtype.is_floating_point or other.dtype.is_floating_point
        kind = self.dtype if self.dtype.is_floating_point else other.dtype
        return Tensor([float(v) if floating else v for v in out], (n, m), kind, self.device)

    # --- reductions and conversions ---
    def sum(self) -> Tensor:
        return Tensor([sum(self._data)], (), self.dtype, self.device)

    def mean(self) -> Tensor:
        if not self.dtype.is_floating_point:
            raise RuntimeError("mean(): could not infer output dtype. Input dtype must be floating")
        return Tensor([math.fsum(self._data) / len(self._data)], (), self.dtype, self.device)

    def all(self) -> Tensor:
        return Tensor([all(self._data)], (), dtype("bool", False), self.device)

    def item(self):
        if len(self._data) != 1:
            raise RuntimeError(
                f"a Tensor with {len(self._data)} elements cannot be converted to Scalar"
            )
        return self._data[0]

    def tolist(self):
        if not self.shape:
            return self._data[0]
        return _nest(self._data, self.shape)

    def numel(self) -> int:
        return len(self._data)

    def size(self) -> tuple[int, ...]:
        return self.shape

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def to(self, where) -> Tensor:
        return Tensor(list(self._data), self.shape, self.dtype, _place(where))

    def cuda(self, index: int = 0) -> Tensor:
        return self.to(device("cuda", index))

    def cpu(self) -> Tensor:
        return self.to("cpu")

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def __repr__(self) -> str:
        def fmt(v):
            if isinstance(v, bool):
                return str(v)
            return f"{v:g}." if isinstance(v, float) and v == int(v) else str(v)

        body = fmt(self._data[0]) if not self.shape else _render(self.tolist(), fmt)
        where = f", device='{self.device}'" if self.device.type == "cuda" else ""
        return f"tensor({body}{where})"


def _nest(flat: list, shape: tuple[int, ...]):
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0]
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _render(value, fmt) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_render(v, fmt) for v in value) + "]"
    return fmt(value)


def _shape(size: Iterable[int] | tuple) -> tuple[int, ...]:
    if len(size) == 1 and not isinstance(size[0], int):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def full(size, fill_value, *, dtype: dtype | None = None, device=None) -> Tensor:
    shape = _shape(size if isinstance(size, (tuple, list)) else (size,))
    kind = dtype or (float32 if isinstance(fill_value, float) else int64)
    count = math.prod(shape)
    value = float(fill_value) if kind.is_floating_point else int(fill_value)
    return Tensor([value] * count, shape, kind, _place(device))


def ones(*size, dtype: dtype | None = None, device=None) -> Tensor:
    return full(_shape(size), 1.0, dtype=dtype or float32, device=device)


def zeros(*size, dtype: dtype | None = None, device=None) -> Tensor:
    return full(_shape(size), 0.0, dtype=dtype or float32, device=device)


def arange(end, *, dtype: dtype | None = None, device=None) -> Tensor:
    kind = dtype or (float32 if isinstance(end, float) else int64)
    values = [float(i) if kind.is_floating_point else i for i in range(int(end))]
    return Tensor(values, (len(values),), kind, _place(device))


def tensor(data, *, dtype: dtype | None = None, device=None) -> Tensor:
    shape: list[int] = []
    probe = data
    while isinstance(probe, (list, tuple)):
        shape.append(len(probe))
        probe = probe[0] if probe else 0
    flat: list = []

    def walk(v):
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        else:
            flat.append(v)

    walk(data)
    kind = dtype or (float32 if any(isinstance(v, float) for v in flat) else int64)
    flat = [float(v) if kind.is_floating_point else int(v) for v in flat]
    return Tensor(flat, tuple(shape), kind, _place(device))
