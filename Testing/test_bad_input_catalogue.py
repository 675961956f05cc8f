"""Every row of the bad-input catalogue (``Testing/bad_inputs.py``, ``docs/bad-input.md``),
through the command line and through the modules' Logic classes: a clear error naming the
problem and the fix, no traceback, no partial output, the scene as it was."""

from __future__ import annotations

import pytest

from bad_inputs import ROWS
from medtorch.cli import main
from medtorch.errors import MedTorchInputError

CLI_ROWS = [r for r in ROWS if r.cli is not None]
LOGIC_ROWS = [r for r in ROWS if r.logic is not None]


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r.key for r in CLI_ROWS])
def test_cli_row(row, tmp_path, capsys, monkeypatch):
    for k, v in (row.env or {}).items():
        monkeypatch.setenv(k, v)
    argv = row.cli(tmp_path)
    if row.patch:
        row.patch(monkeypatch)
    before = {p for p in tmp_path.rglob("*")}
    rc = main(argv + ["-q"])
    err = capsys.readouterr().err
    assert rc == row.exit_code, err
    assert "Traceback" not in err
    assert row.expect.lower() in err.lower(), err
    after = {p for p in tmp_path.rglob("*")}
    if row.exit_code == 2:
        assert "What to do" in err
    if row.writes:  # accepted under a policy: the outputs and the verdict beside them
        assert any(p.name.endswith(".verdict.json") for p in after - before), sorted(map(str, after - before))
    else:
        assert after == before, f"partial output left: {sorted(map(str, after - before))}"


@pytest.mark.parametrize("row", LOGIC_ROWS, ids=[r.key for r in LOGIC_ROWS])
def test_logic_row(row, scene, monkeypatch):
    from medtorch.slicer.jobs import scene_node_ids

    for k, v in (row.env or {}).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(MedTorchInputError) as exc:
        # inputs are created inside row.logic(); compare the scene right after the failure
        # against the nodes that existed when the Logic was called (no orphans added)
        row.logic()
    msg = str(exc.value)
    assert "What to do" in msg and row.expect.lower() in msg.lower(), msg
    names = {scene.GetNodeByID(i).GetName() for i in scene_node_ids(scene) if scene.GetNodeByID(i) is not None}
    assert not any(n.startswith("__medtorch") for n in names)
    assert not any(("fused with" in n) or n.endswith(("gaussian", "anisotropic", "segmentation")) for n in names)
