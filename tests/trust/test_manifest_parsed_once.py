"""The artifact manifest is parsed once into a typed, frozen ``Manifest``; the JSON on disk is
unchanged (an artifact written before the typed record still loads, and one written now has
the bytes the writer produced), and the pass report is one type, ``PassRecord``, on a compiled
step and on a loaded artifact alike."""

import copy
import hashlib
import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import luxc
from luxc.cli import main
from luxc.cli.run_checkpoints import artifact_digest
from luxc.passes import PassRecord
from luxc.runtime.artifacts._format import check_manifest
from luxc.runtime.artifacts._manifest import ArraySpec, Manifest, StoredOptions, parse_manifest
from luxc.runtime.files._bounded_read import json_bytes
from luxc.runtime.files._errors import ArtifactError
from tests.trust._artifacts import mlp_state as _train_state
from tests.trust._artifacts import step_data as _data

# The fields a format-2 manifest may lack: the schema checks them only when present.
OPTIONAL = ("flops", "bytes_accessed", "memory", "mesh", "autotune", "forward", "evaluate")
OPTIONAL_LAYOUT = ("stat_names", "statics", "model_summary", "objective", "optimizer")


def _raw(directory):
    return json.loads((directory / "manifest.json").read_bytes())


def _load(directory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return luxc.load(directory)


def test_a_written_manifest_parses_into_its_typed_fields_and_back_to_the_same_bytes(art):
    data = (art / "manifest.json").read_bytes()
    raw = json.loads(data)
    manifest = check_manifest(copy.deepcopy(raw))
    assert json_bytes(manifest.to_json()) == data  # the writer's own serialisation
    layout = raw["layout"]
    assert (manifest.layout.n_state, manifest.layout.n_data, manifest.layout.n_stats) == \
        (layout["n_state"], layout["n_data"], layout["n_stats"])
    assert manifest.layout.state_names == tuple(layout["state_names"])
    assert manifest.inputs == tuple(ArraySpec(tuple(s["shape"]), s["dtype"], s["name"])
                                    for s in raw["inputs"])
    assert manifest.data_inputs[0].shape == tuple(np.shape(_data()[0]))
    assert manifest.files["step.mlir"].size == (art / "step.mlir").stat().st_size
    assert manifest.pass_report == tuple(PassRecord(**r) for r in raw["pass_report"])
    assert manifest.forward is not None and manifest.forward.inputs[0].shape == (3,)
    options = raw["compile_options"]
    assert manifest.compile_options == StoredOptions(
        options["passes"] if isinstance(options["passes"], str) else tuple(options["passes"]),
        options["xla_options"], options["precision"])


def test_the_manifest_format_keeps_its_fields_and_pass_report_entries(art):
    raw = _raw(art)
    assert set(raw) >= {"format", "format_version", "created", "versions", "platforms",
                        "executable_platform", "executable_key", "layout", "inputs", "outputs",
                        "pass_report", "compile_options", "trace_seconds", "compile_seconds",
                        "files"}
    assert raw["format"] == "luxc-artifact" and raw["format_version"] == 2
    for entry in raw["pass_report"]:
        assert set(entry) == {"name", "rewrites", "ops_before", "ops_after", "seconds"}


def _without_later_fields(art):
    """Rewrite ``art``'s manifest as a luxc without the optional fields wrote it; its JSON."""
    raw = _raw(art)
    assert raw["pass_report"], "the default CPU pipeline records its passes"
    for key in OPTIONAL:
        raw.pop(key, None)
    for key in OPTIONAL_LAYOUT:
        raw["layout"].pop(key)
    for entry in raw["pass_report"]:
        del entry["seconds"]
    for name in ("forward.jaxexport", "evaluate.jaxexport"):
        del raw["files"][name]
        (art / name).unlink()
    (art / "manifest.json").write_bytes(json_bytes(raw))
    (art / "manifest.sig").unlink()  # an edited manifest is no longer this user's
    return raw


def test_a_manifest_without_the_optional_fields_of_later_luxc_still_loads_and_trains(art):
    expected = _load(art).run(2)
    raw = _without_later_fields(art)
    loaded = _load(art)
    assert loaded.manifest.to_json() == raw
    assert loaded.manifest.layout.stat_names is None and loaded.manifest.forward is None
    assert [r.seconds for r in loaded.pass_report] == [0.0] * len(raw["pass_report"])
    np.testing.assert_allclose(loaded.run(2), expected, rtol=1e-6)


def test_a_loaded_artifacts_pass_report_is_the_compiled_steps_record_type(art):
    loaded = _load(art)
    ts = _train_state()
    cs = luxc.compile_step(luxc.MSELoss(), _data(), ts)
    assert all(isinstance(r, PassRecord) for r in loaded.pass_report)
    assert [(r.name, r.rewrites, r.ops_before, r.ops_after) for r in loaded.pass_report] == \
        [(r.name, r.rewrites, r.ops_before, r.ops_after) for r in cs.pass_report]


def test_pass_record_json_round_trip_keeps_every_field():
    record = PassRecord("dot_flatten", rewrites=3, ops_before=40, ops_after=37, seconds=0.25)
    assert PassRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["files"]["step.mlir"].pop("sha256"),
     r"manifest field files\['step.mlir'\].sha256 is missing"),
    (lambda m: m["files"]["step.mlir"].update(sha256="00"), "manifest entry for step.mlir is malformed"),
    (lambda m: m.update(mesh={"data": 0}), r"the manifest's mesh \(\{'data': 0\}\) is not a map"),
    (lambda m: m["pass_report"][0].update(seconds="slow"),
     r"manifest field pass_report\[0\].seconds must be a number"),
    (lambda m: m["layout"].update(statics=[1]), "manifest field layout.statics must be an object"),
    (lambda m: m["inputs"][0].update(sharding=["data"]),
     "manifest input/output 0 has a sharding that is not text"),
])
def test_parse_manifest_refuses_a_malformed_field_in_one_line_naming_it(art, edit, message):
    raw = _raw(art)
    if not raw["pass_report"]:
        raw["pass_report"] = [PassRecord("fuse_rsqrt", 0, 1, 1, 0.0).to_json()]
    edit(raw)
    with pytest.raises(ArtifactError, match=message) as e:
        parse_manifest(raw)
    assert "\n" not in str(e.value)


def test_the_manifest_is_frozen_and_its_json_a_copy(art):
    manifest = check_manifest(_raw(art))
    assert isinstance(manifest, Manifest)
    with pytest.raises(AttributeError):
        manifest.layout = None
    manifest.to_json()["layout"]["n_state"] = -1
    assert manifest.to_json()["layout"]["n_state"] == manifest.layout.n_state >= 0


def test_export_step_returns_the_manifest_it_wrote(tmp_path):
    written = luxc.export_step(luxc.MSELoss(), _data(), _train_state(), tmp_path / "s.luxc")
    on_disk = (tmp_path / "s.luxc" / "manifest.json").read_bytes()
    assert isinstance(written, Manifest)
    assert json_bytes(written.to_json()) == on_disk
    assert written == check_manifest(json.loads(on_disk))


def test_an_inputs_partition_spec_is_read_as_text():
    entry = {"name": "data[0]", "shape": [64, 4], "dtype": "float32", "sharding": "P('data',)"}
    assert ArraySpec.from_json(entry) == ArraySpec((64, 4), "float32", "data[0]", "P('data',)")
    assert ArraySpec.from_json({"shape": [3], "dtype": "int32"}).sharding is None


def test_a_run_records_the_artifact_by_the_hash_of_its_file_table_as_written(art):
    # The digest a checkpoint's run record holds: the same from the typed entries as from the
    # JSON on disk, so `luxc run --resume` still finds the checkpoints of earlier runs.
    files = _raw(art)["files"]
    expected = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    assert artifact_digest(check_manifest(_raw(art))) == expected


def test_inspect_says_what_an_older_manifest_does_not_record(art):
    raw = _without_later_fields(art)
    text = CliRunner().invoke(main, ["inspect", str(art)])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert f"model       {raw['layout']['model']}" in lines
    assert "objective   (not recorded by this luxc version)" in lines
    assert "optimizer   (not recorded by this luxc version)" in lines
    assert not any(line.startswith(("flops", "memory", "autotune", "mesh")) for line in lines)
    as_json = CliRunner().invoke(main, ["inspect", "--json", str(art)])
    assert json.loads(as_json.output) == raw


def test_inspect_shows_the_pass_list_as_it_was_given(art):
    raw = _raw(art)
    raw["compile_options"]["passes"] = ["fuse_rsqrt", "dot_flatten"]
    (art / "manifest.json").write_bytes(json_bytes(raw))
    (art / "manifest.sig").unlink()
    assert check_manifest(raw).compile_options.passes == ("fuse_rsqrt", "dot_flatten")
    text = CliRunner().invoke(main, ["inspect", str(art)])
    assert "options     passes=['fuse_rsqrt', 'dot_flatten'] precision=" in text.output, text.output
