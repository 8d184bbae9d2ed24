"""The model helper image (testing/hub.py): Debian's python3 runs huggingface_hub offline."""

from __future__ import annotations

from testing.engines import EngineFactory
from testing.hub import HELPER_IMAGE, HUB_VERSION, WHEELS, load_helper_image, require_hub_tools

# Imports the hub and the native module of hf_xet (its Rust extension: built for manylinux,
# it must load with bookworm's glibc), and says which interpreter ran them.
PROBE = """\
import importlib.metadata, os, sys
import huggingface_hub, hf_xet.hf_xet as native
print(huggingface_hub.__version__)
print(importlib.metadata.version("hf_xet"))
print(os.path.basename(native.__file__))
print(sys.executable, "%d.%d" % sys.version_info[:2])
"""


def test_helper_image_runs_huggingface_hub_without_a_network(engines: EngineFactory) -> None:
    require_hub_tools()
    engine = engines("hub", image=False)
    image_id = load_helper_image(engine)
    assert load_helper_image(engine) == image_id  # the same recipe is imported once
    client = engine.client()
    run = {"network_mode": "none", "environment": {"HF_HUB_OFFLINE": "1"}, "remove": True}

    out = client.containers.run(HELPER_IMAGE, ["python3", "-c", PROBE], **run)
    assert out.decode().splitlines() == [
        HUB_VERSION,
        WHEELS["hf_xet"],
        "hf_xet.abi3.so",
        "/usr/bin/python3 3.11",
    ]
    # pip's console scripts run with the image's python3.
    out = client.containers.run(HELPER_IMAGE, ["hf", "version"], **run)
    assert f"version: {HUB_VERSION}" in out.decode()
