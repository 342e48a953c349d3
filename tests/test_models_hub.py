"""Hub ids load through the normal Hugging Face cache, offline, and a missing one says what to download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from families_helpers import tiny_pipe

from trainer.models.tiny import weights_hash

REPO = Path(__file__).resolve().parents[1]
REVISION = "0123456789abcdef0123456789abcdef01234567"

_SCRIPT = """
import json, sys
from trainer.config import ModelConfig
from trainer.errors import ModelError
from trainer.models.loading import load_base
from trainer.models.tiny import weights_hash
base = load_base(ModelConfig(base_model="studio-test/tiny-sdxl"))
try:
    load_base(ModelConfig(base_model="studio-test/not-downloaded"))
    missing = ""
except ModelError as err:
    missing = str(err)
print(json.dumps({"family": base.family.name, "hash": weights_hash(base.pipe), "missing": missing}))
"""


def test_hub_id_loads_offline_from_a_hub_cache_layout(tmp_path):
    snapshot = tmp_path / "hf" / "hub" / "models--studio-test--tiny-sdxl" / "snapshots" / REVISION
    tiny_pipe("sdxl").save_pretrained(snapshot, safe_serialization=True)
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text(REVISION)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["family"] == "sdxl"
    assert result["hash"] == weights_hash(tiny_pipe("sdxl"))
    message = result["missing"]
    assert message.startswith("studio-test/not-downloaded is not (completely) in the Hugging Face cache")
    assert str(tmp_path / "hf" / "hub") in message and "HF_HUB_OFFLINE=1" in message
    assert "hf download studio-test/not-downloaded" in message
