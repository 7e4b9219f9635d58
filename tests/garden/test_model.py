"""Documents map to the typed model: DNA (rebuilds) versus deployment (never rebuilds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import GardenInvalid, GardenLoadError, GardenSourceError
from reconciler.garden import Problem, read_app_file, read_garden
from reconciler.model import Deployment, Dna, Health, RestartPolicy, Rollout
from reconciler.records import Nutrients

CORPUS = Path(__file__).parent / "corpus"

MINIMAL = """\
apiVersion: myco/v1
kind: Spore
metadata:
  name: billing
spec:
  version: "1.0.0"
  source: ../apps/billing
  command: [python3, app.py]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()  # the nearest enclosing work tree is the repository root
    (tmp_path / "apps" / "billing").mkdir(parents=True)
    (tmp_path / "garden").mkdir()
    return tmp_path


def test_defaults(repo: Path) -> None:
    manifest = repo / "garden" / "billing.yaml"
    manifest.write_text(MINIMAL)
    [app] = read_app_file(manifest)
    assert app.name == "billing"
    assert app.dna == Dna(
        name="billing",
        version="1.0.0",
        source=(repo / "apps" / "billing").resolve(),
        command=("python3", "app.py"),
    )
    assert app.dna.nutrients == Nutrients(100, 64)
    assert app.dna.health == Health()
    assert app.dna.restart == RestartPolicy()
    assert app.deployment == Deployment()
    assert app.deployment.rollout == Rollout(strategy="blue-green", warmup_s=2.0)
    assert app.prefix == "/billing"
    assert app.origin.path == str(manifest)
    assert app.origin.line == 1


def test_full_spec_maps_every_field() -> None:
    case = CORPUS / "valid" / "full-spec"
    result = read_garden(case, repo_root=case)
    apps = {a.name: a for a in result.garden.apps}
    full = apps["full"]
    assert full.labels == (("team", "payments"),)
    d = full.dna
    assert d.args == ("--port", "8080")
    assert d.env == (("LOG_LEVEL", "debug"), ("_X1", ""))
    assert d.nutrients == Nutrients(250, 128)
    assert d.slo.p99_budget_ms == 200
    assert (d.security.read_only_fs, d.security.lsm_profile) == (True, "strict")
    assert d.health == Health("/healthz", 0.5, 2.0, 0.0)
    assert d.restart == RestartPolicy("on-failure", 1.0, 10.0, 3, 30.0, 2.0)
    dep = full.deployment
    assert dep.instances == 3
    assert dep.rollout.strategy == "canary"
    assert dep.rollout.canary_weight == 20
    assert dep.rollout.canary_steps == (10, 50)
    assert dep.rollout.progress_deadline_s == 60.0
    assert dep.route_prefix == "/api/full"
    assert full.prefix == "/api/full"
    assert dep.depends_on == ("dep",)
    assert apps["dep"].dna.version == "2024-01-01"  # a date-like version stays text


def test_deployment_fields_do_not_change_the_dna(repo: Path) -> None:
    manifest = repo / "garden" / "billing.yaml"
    manifest.write_text(MINIMAL)
    [before] = read_app_file(manifest)
    manifest.write_text(
        MINIMAL
        + "  instances: 7\n  suspend: true\n  route: {prefix: /pay}\n"
        + "  rollout: {strategy: rolling}\n"
    )
    [after] = read_app_file(manifest)
    assert after.dna == before.dna
    assert hash(after.dna) == hash(before.dna)
    assert after.deployment != before.deployment
    manifest.write_text(MINIMAL.replace('"1.0.0"', '"1.0.1"'))
    [bumped] = read_app_file(manifest)
    assert bumped.dna != before.dna


def test_read_app_file_raises_with_every_problem(repo: Path) -> None:
    manifest = repo / "garden" / "billing.yaml"
    manifest.write_text(MINIMAL + "  replicas: 2\n  instances: -1\n")
    with pytest.raises(GardenInvalid) as info:
        read_app_file(manifest)
    assert [str(p) for p in info.value.problems] == [
        f"{manifest}:9:3: unknown field 'replicas' in spec (did you mean 'instances'?)",
        f"{manifest}:10:14: spec.instances: -1 is out of range (must be at least 0)",
    ]
    assert all(isinstance(p, Problem) for p in info.value.problems)


def test_read_app_file_refusals(repo: Path) -> None:
    manifest = repo / "garden" / "billing.yaml"
    manifest.write_text(MINIMAL + "  args: !!python/object/apply:os.system [id]\n")
    with pytest.raises(GardenLoadError) as info:
        read_app_file(manifest)
    assert (info.value.line, info.value.col) == (9, 9)
    with pytest.raises(GardenSourceError):
        read_app_file(repo / "garden" / "missing.yaml")


def test_read_app_file_source_must_stay_in_repo(repo: Path) -> None:
    manifest = repo / "garden" / "billing.yaml"
    manifest.write_text(MINIMAL.replace("../apps/billing", "../../"))
    with pytest.raises(GardenInvalid) as info:
        read_app_file(manifest)
    assert [str(p) for p in info.value.problems] == [
        f"{manifest}:7:11: spec.source: '../../' resolves outside the repository root"
    ]


def test_source_symlink_escaping_the_root_is_refused(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (repo / "apps" / "escape").symlink_to(outside)
    manifest = repo / "garden" / "billing.yaml"
    manifest.write_text(MINIMAL.replace("../apps/billing", "../apps/escape"))
    with pytest.raises(GardenInvalid):
        read_app_file(manifest)


def test_revision_is_a_content_hash(repo: Path) -> None:
    (repo / "garden" / "billing.yaml").write_text(MINIMAL)
    first = read_garden(repo / "garden").garden.revision
    assert first.startswith("sha256:")
    assert read_garden(repo / "garden").garden.revision == first
    (repo / "garden" / "billing.yaml").write_text(MINIMAL + "  instances: 2\n")
    assert read_garden(repo / "garden").garden.revision != first


def test_outside_git_the_garden_dir_is_the_root(tmp_path: Path) -> None:
    garden = tmp_path / "garden"
    (garden / "apps" / "billing").mkdir(parents=True)
    (garden / "billing.yaml").write_text(MINIMAL.replace("../apps/billing", "apps/billing"))
    (tmp_path / "sibling").mkdir()
    (garden / "other.yaml").write_text(
        MINIMAL.replace("../apps/billing", "../sibling").replace("billing\n", "other\n")
    )
    result = read_garden(garden)
    assert [a.name for a in result.garden.apps] == ["billing"]
    assert [p.message for p in result.problems] == [
        "spec.source: '../sibling' resolves outside the repository root"
    ]
