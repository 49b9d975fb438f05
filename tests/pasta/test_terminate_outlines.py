"""scripts/terminate_outlines.py: a JSONL of answers or pairs, its outlines terminated, nothing else changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "terminate_outlines.py"


def test_rows_keep_every_field_but_their_outlines_end_with_a_semicolon(tmp_path):
    rows = [{"id": "a", "prompt": "Tips?", "annotated": "Tips:\nOverview: Diet; Sleep.\n\n1. x", "source": "s"},
            {"id": "b", "prompt": "Hi", "annotated": "Hello. Nothing to list."},
            {"id": "c", "prompt": "P", "kind": "outline_repeat", "chosen": "Overview: A; B.\n\n1.",
             "rejected": "Overview: A; B; B;", "rejected_truncated": True}]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    done = subprocess.run([sys.executable, str(SCRIPT), str(source), str(out)], capture_output=True, text=True,
                          check=True)
    assert "3 rows, 2 with an outline rewritten" in done.stdout
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got[0] == dict(rows[0], annotated="Tips:\nOverview: Diet; Sleep;\n\n1. x")
    assert got[1] == rows[1]
    assert got[2] == dict(rows[2], chosen="Overview: A; B;\n\n1.")  # the rejected side had no '.' to end
