"""The artifact manifest as one typed, frozen record, parsed once: :func:`parse_manifest` checks
the JSON of ``manifest.json`` against the schema (one ``ArtifactError`` line naming the field)
and builds a :class:`Manifest`; every reader then uses its attributes.

The JSON on disk is unchanged: a :class:`Manifest` keeps the object it was parsed from and
:meth:`Manifest.to_json` returns it as read, so an artifact written by any luxc of format
version 2 loads, and one written now has the same bytes. Fields a newer luxc may add are kept
in that JSON and ignored here. Every number of ``layout`` and of the ``inputs``/``outputs``
specs is checked before a record is built: a record never holds a negative count or a
dimension past 2⁴⁰."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from luxc.passes import PassRecord
from luxc.runtime.artifacts._json_schema import check_schema
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._shown import shown

FORMAT = "luxc-artifact"
FORMAT_VERSION = 2
_MAX_DIMENSION = 1 << 40
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))
_ARRAY = {"shape": [int], "dtype": str}
# The manifest's schema (runtime/artifacts/_json_schema.py); fields not listed are allowed
# (newer luxc may add some).
_SCHEMA: dict[str, Any] = {
    "format": str,
    "format_version": int,
    "created": str,
    "versions": {"luxc": str, "jax": str, "jaxlib": str},
    "platforms": [str],
    "executable_platform": (str, type(None)),
    "executable_key": (str, type(None)),
    "layout": {"n_state": int, "n_data": int, "state_names": [str], "data_names": [str],
               "n_stats": int, "step": int, "model": str},
    "inputs": [_ARRAY],
    "outputs": [{"name": str, **_ARRAY}],
    "pass_report": [{"name": str, "rewrites": int, "ops_before": int, "ops_after": int}],
    "compile_options": {"passes": (str, list), "xla_options": dict, "precision": str},
    "trace_seconds": _NUMBER,
    "compile_seconds": _OPTIONAL_NUMBER,
    "files": dict,
}
# The keys of a `luxc run --log` row besides the stats' own.
LOG_KEYS = ("step", "loss", "eval")
# Optional fields: checked when present.
_OPTIONAL = {"flops": _OPTIONAL_NUMBER, "bytes_accessed": _OPTIONAL_NUMBER,
             "memory": (dict, type(None))}
ARRAY_DTYPES = frozenset(str(np.dtype(t)) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128, ml_dtypes.bfloat16,
    ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2))


@dataclass(frozen=True)
class ArraySpec:
    """One array of the step's signature: ``shape`` (batch-first for data), ``dtype`` (numpy's
    name, e.g. ``"float32"``), its ``name`` in the user's terms (``None`` in a forward or
    evaluate entry, whose arrays are named by position) and, for an input of a sharded step,
    its partition spec over the mesh as text (``"P('data')"``; ``None`` otherwise)."""

    shape: tuple[int, ...]
    dtype: str
    name: str | None = None
    sharding: str | None = None

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> ArraySpec:
        return cls(tuple(entry["shape"]), entry["dtype"], entry.get("name"),
                   entry.get("sharding"))


@dataclass(frozen=True)
class Layout:
    """How the step's flat signature splits: ``inputs = state (n_state) + data (n_data)``,
    ``outputs = state (n_state) + loss + stats (n_stats)``; the leaves' names, the step count
    the state was saved at, and the text ``luxc inspect`` shows."""

    n_state: int
    n_data: int
    n_stats: int
    state_names: tuple[str, ...]
    data_names: tuple[str, ...]
    step: int
    model: str
    stat_names: tuple[str, ...] | None = None
    statics: Mapping[str, Any] | None = None
    model_summary: str | None = None
    objective: str | None = None
    optimizer: str | None = None


@dataclass(frozen=True)
class ProgramSpec:
    """A stored ``forward`` or ``evaluate`` program: it takes the first ``n_parameters`` and
    the last ``n_states`` state arrays, then ``inputs`` (trailing shapes; the batch axis is
    symbolic), and returns ``n_outputs`` arrays."""

    n_parameters: int
    n_states: int
    n_outputs: int
    inputs: tuple[ArraySpec, ...]


@dataclass(frozen=True)
class StoredOptions:
    """The compile options the step was built with: ``passes`` (``"default"``, ``"none"`` or
    the pass names, as given), ``xla_options`` (XLA's flags by name) and ``precision``
    (``jax.default_matmul_precision``'s value)."""

    passes: str | tuple[str, ...]
    xla_options: Mapping[str, bool | int | float | str]
    precision: str

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> StoredOptions:
        passes = entry["passes"]
        return cls(passes if isinstance(passes, str) else tuple(passes), entry["xla_options"],
                   entry["precision"])


@dataclass(frozen=True)
class FileEntry:
    """A listed file's SHA-256 (64 hex digits) and size in bytes."""

    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``, checked and typed. ``inputs``/``outputs`` follow :class:`Layout`;
    ``pass_report`` is the passes' :class:`~luxc.passes.PassRecord` list; ``flops``,
    ``bytes_accessed`` and ``memory`` are XLA's figures for the host executable (``None`` when
    none was compiled); ``mesh`` maps axis names to sizes for a sharded step."""

    format_version: int
    created: str
    versions: Mapping[str, str]
    platforms: tuple[str, ...]
    executable_platform: str | None
    executable_key: str | None
    layout: Layout
    inputs: tuple[ArraySpec, ...]
    outputs: tuple[ArraySpec, ...]
    pass_report: tuple[PassRecord, ...]
    compile_options: StoredOptions
    trace_seconds: float
    compile_seconds: float | None
    files: Mapping[str, FileEntry]
    flops: float | None = None
    bytes_accessed: float | None = None
    memory: Mapping[str, float] | None = None
    mesh: Mapping[str, int] | None = None
    autotune: Mapping[str, Any] | None = None
    forward: ProgramSpec | None = None
    evaluate: ProgramSpec | None = None
    _json: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def state_inputs(self) -> tuple[ArraySpec, ...]:
        return self.inputs[:self.layout.n_state]

    @property
    def data_inputs(self) -> tuple[ArraySpec, ...]:
        return self.inputs[self.layout.n_state:]

    @property
    def xla_options(self) -> Mapping[str, Any]:
        return self.compile_options.xla_options

    def to_json(self) -> dict[str, Any]:
        """The JSON object this manifest was parsed from, as read (a copy)."""
        return copy.deepcopy(dict(self._json))


def parse_manifest(raw: Any) -> Manifest:
    """``raw`` (the parsed JSON of ``manifest.json``) checked against the schema and built into
    a :class:`Manifest`; one ``ArtifactError`` line naming the field otherwise."""
    _check_format(raw)
    check_schema(raw, _SCHEMA, "")
    for key, schema in _OPTIONAL.items():
        if key in raw:
            check_schema(raw[key], schema, key)
    _check_values(raw)
    _check_layout(raw)
    _check_program(raw, "forward", {"input": _ARRAY})
    _check_program(raw, "evaluate", {"inputs": [_ARRAY]})
    _check_mesh(raw.get("mesh"))
    return _build(raw)


def _check_format(raw: Any) -> None:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise ArtifactError(f"not a luxc artifact (manifest format is {found!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"artifact format version {raw.get('format_version')!r}; this "
                            f"luxc reads version {FORMAT_VERSION}: recompile it with this luxc")


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)


def _check_values(raw: dict[str, Any]) -> None:
    """The values the schema's types do not pin down: figures are numbers, XLA options plain
    values, arrays of a dtype luxc writes with dimensions in range, file entries a SHA-256 and
    a size, pass times numbers."""
    if not all(_is_number(v) for v in (raw.get("memory") or {}).values()):
        raise ArtifactError("manifest field memory must map names to numbers")
    for name, value in raw["compile_options"]["xla_options"].items():
        if not isinstance(value, bool | int | float | str):
            raise ArtifactError(f"manifest XLA option {name} must be a bool, number or string")
    for i, spec in enumerate(raw["inputs"] + raw["outputs"]):
        if spec["dtype"] not in ARRAY_DTYPES:
            raise ArtifactError(f"manifest input/output {i} has dtype {spec['dtype'][:40]!r}, "
                                "which is not an array dtype luxc writes")
        if any(not 0 <= d < _MAX_DIMENSION for d in spec["shape"]):
            raise ArtifactError(f"manifest input/output {i} has a dimension out of range")
        if not isinstance(spec.get("sharding", ""), str):
            raise ArtifactError(f"manifest input/output {i} has a sharding that is not text")
    for name, entry in raw["files"].items():
        check_schema(entry, {"sha256": str, "size": int}, f"files[{name!r}]")
        if not _HEX64.fullmatch(entry["sha256"]) or entry["size"] < 0:
            raise ArtifactError(f"manifest entry for {shown(name, 200)} is malformed")
    for i, record in enumerate(raw["pass_report"]):
        if not _is_number(record.get("seconds", 0.0)):
            raise ArtifactError(f"manifest field pass_report[{i}].seconds must be a number")


def _check_layout(raw: dict[str, Any]) -> None:
    layout, n_inputs = raw["layout"], len(raw["inputs"])
    n_state, n_data, n_stats = layout["n_state"], layout["n_data"], layout["n_stats"]
    if n_state + n_data != n_inputs or min(n_state, n_data, n_stats) < 0:
        raise ArtifactError("manifest layout counts do not match its inputs")
    if n_data == 0 or not layout["data_names"]:
        raise ArtifactError("manifest field layout.data_names is empty: the step takes no data, "
                            "but every luxc training step takes some; this artifact was not "
                            "written by luxc compile (recompile it)")
    if len(layout["state_names"]) != n_state or len(layout["data_names"]) != n_data:
        raise ArtifactError(f"manifest layout names {len(layout['state_names'])} state and "
                            f"{len(layout['data_names'])} data arrays but counts {n_state} and "
                            f"{n_data}")
    for key in ("model_summary", "objective", "optimizer"):  # optional text
        if key in layout and not isinstance(layout[key], str):
            raise ArtifactError(f"manifest field layout.{key} must be str; found "
                                f"{type(layout[key]).__name__}")
    if "statics" in layout and not isinstance(layout["statics"], dict):
        raise ArtifactError(f"manifest field layout.statics must be an object; found "
                            f"{type(layout['statics']).__name__}")
    if layout["step"] < 0:
        raise ArtifactError(f"manifest field layout.step is {layout['step']}; a step count is "
                            "never negative")
    _check_stat_names(layout.get("stat_names"), n_stats)
    _check_outputs(layout, raw["inputs"], raw["outputs"])


def _check_stat_names(names: Any, n_stats: int) -> None:
    """``layout.stat_names`` (optional): the keys of the stats in ``luxc run``'s log rows, so
    strings, one per stat, distinct, and none of the row's own keys."""
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ArtifactError(f"manifest field layout.stat_names must be a list of strings, one "
                            f"name per stat; found {shown(repr(names), 200)} (recompile the "
                            "artifact)")
    if len(names) != n_stats:
        raise ArtifactError(f"manifest field layout.stat_names names {len(names)} stats but "
                            f"layout.n_stats is {n_stats} (recompile the artifact)")
    clash = sorted({n for n in names if n in LOG_KEYS or names.count(n) > 1})
    if clash:
        raise ArtifactError(f"manifest field layout.stat_names holds {shown(', '.join(clash), 200)}"
                            f": a stat's name must be unique and not one of the log's own keys "
                            f"({', '.join(LOG_KEYS)}), or its value would replace theirs "
                            "(recompile the artifact)")


def _check_outputs(layout: dict[str, Any], inputs: list[dict[str, Any]],
                   outputs: list[dict[str, Any]]) -> None:
    """The outputs are the state (as it went in), a scalar loss and ``n_stats`` stats."""
    n_state, n_stats = layout["n_state"], layout["n_stats"]
    loss = outputs[n_state] if len(outputs) > n_state else {"shape": None, "dtype": "none"}
    if loss["shape"] != []:
        raise ArtifactError(f"manifest: the step's output after the state, its loss, is "
                            f"{describe(loss)}, not a scalar: layout.n_state ({n_state}) does "
                            "not split the inputs into state and data where the step does (a "
                            "state array was moved into the data?)")
    if len(outputs) != n_state + 1 + n_stats:
        # More outputs than the layout says: a scalar state array (an adjustable learning
        # rate) moved into the data passes the loss check above and lands here.
        hint = " (a state array was moved into the data?)" if len(outputs) > n_state + 1 + \
            n_stats else ""
        raise ArtifactError(f"manifest field layout.n_stats is {n_stats}, but the step has "
                            f"{len(outputs) - n_state - 1} outputs after its {n_state} state "
                            f"arrays and the loss{hint}")
    for name, given, got in zip(layout["state_names"], inputs, outputs):
        if (given["shape"], given["dtype"]) != (got["shape"], got["dtype"]):
            raise ArtifactError(f"manifest: state array {shown(name, 200)} goes in as "
                                f"{describe(given)} but comes out as {describe(got)}; the state "
                                "the step returns must be the state it takes")


def describe(spec: Mapping[str, Any] | ArraySpec) -> str:
    """An array spec as ``float32[32, 4]``, its dtype escaped (the manifest is data)."""
    if isinstance(spec, ArraySpec):
        return f"{shown(spec.dtype, 40)}{list(spec.shape)}"
    return f"{shown(spec['dtype'], 40)}{spec['shape']}"


def _check_program(raw: dict[str, Any], key: str, inputs: dict[str, Any]) -> None:
    if key not in raw:
        return
    spec = raw[key]
    check_schema(spec, {"n_parameters": int, "n_states": int, "n_outputs": int, **inputs}, key)
    n_state = raw["layout"]["n_state"]
    if min(spec["n_parameters"], spec["n_states"], spec["n_outputs"]) < 0 or \
            spec["n_parameters"] + spec["n_states"] > n_state:
        raise ArtifactError(f"manifest field {key} counts {spec['n_parameters']} parameter and "
                            f"{spec['n_states']} state arrays, more than the {n_state} the state "
                            "holds")
    for x in spec.get("inputs", [spec.get("input")]):
        if x["dtype"] not in ARRAY_DTYPES or any(not 0 <= d < _MAX_DIMENSION for d in x["shape"]):
            raise ArtifactError(f"manifest field {key} has an input that is not an array luxc "
                                "writes")


def _check_mesh(axes: Any) -> None:
    """``mesh`` (optional): a non-empty map of axis names to positive sizes."""
    if axes is None:
        return
    if not (isinstance(axes, dict) and axes and all(
            isinstance(k, str) and type(v) is int and v > 0 for k, v in axes.items())):
        raise ArtifactError(f"the manifest's mesh ({str(axes)[:80]}) is not a map of axis names "
                            "to sizes")


def _program(entry: Mapping[str, Any] | None) -> ProgramSpec | None:
    if entry is None:
        return None
    inputs = entry["inputs"] if "inputs" in entry else [entry["input"]]
    return ProgramSpec(entry["n_parameters"], entry["n_states"], entry["n_outputs"],
                       tuple(ArraySpec.from_json(x) for x in inputs))


def _layout(entry: Mapping[str, Any]) -> Layout:
    names = entry.get("stat_names")
    return Layout(entry["n_state"], entry["n_data"], entry["n_stats"],
                  tuple(entry["state_names"]), tuple(entry["data_names"]), entry["step"],
                  entry["model"], None if names is None else tuple(names), entry.get("statics"),
                  entry.get("model_summary"), entry.get("objective"), entry.get("optimizer"))


def _build(raw: dict[str, Any]) -> Manifest:
    return Manifest(
        format_version=raw["format_version"], created=raw["created"], versions=raw["versions"],
        platforms=tuple(raw["platforms"]), executable_platform=raw["executable_platform"],
        executable_key=raw["executable_key"], layout=_layout(raw["layout"]),
        inputs=tuple(ArraySpec.from_json(s) for s in raw["inputs"]),
        outputs=tuple(ArraySpec.from_json(s) for s in raw["outputs"]),
        pass_report=tuple(PassRecord.from_json(r) for r in raw["pass_report"]),
        compile_options=StoredOptions.from_json(raw["compile_options"]), trace_seconds=raw["trace_seconds"],
        compile_seconds=raw["compile_seconds"],
        files={name: FileEntry(e["sha256"], e["size"]) for name, e in raw["files"].items()},
        flops=raw.get("flops"), bytes_accessed=raw.get("bytes_accessed"),
        memory=raw.get("memory"), mesh=raw.get("mesh"), autotune=raw.get("autotune"),
        forward=_program(raw.get("forward")), evaluate=_program(raw.get("evaluate")),
        _json=raw)
