"""The data plane's ``--state-file`` lives on a memory-backed emptyDir: it holds private keys (never on a node's
disk, gone with the pod) and outlives only a container restart."""

from __future__ import annotations

from tests.chart.rendering import all_value_sets, container, pod_spec, render


def test_state_file_is_on_a_memory_backed_volume_in_every_scenario() -> None:
    for name, values in sorted(all_value_sets().items()):
        workload = render(values).workload("dataplane")
        spec, main = pod_spec(workload), container(workload)
        flags = [a for a in main["args"] if a.startswith("--state-file=")]
        assert flags == ["--state-file=/run/portcullis/snapshot.json"], name
        mount = next(m for m in main["volumeMounts"] if m["mountPath"] == "/run/portcullis")
        assert not mount.get("readOnly"), name
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["emptyDir"]["medium"] == "Memory", name
        assert volume["emptyDir"]["sizeLimit"], name
