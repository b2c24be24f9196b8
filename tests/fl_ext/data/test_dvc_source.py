"""DvcDataset against real git + DVC repositories built in tmp (no mocks of DVC).

Each repo is made by fl_ext.data.dvc_export (git init, dvc init, dvc add, a local directory
remote, dvc push, git commit): version A is scikit-learn's digits, version B drops class 3.
"""

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
from dvc.repo import Repo

from fl_ext.data import DatasetSource, Digits
from fl_ext.data.dvc_export import apply_transform, git, init_repo, update_repo, write_npz
from fl_ext.data.dvc_source import DatasetVersion, DvcDataset, parse_npz
from fl_ext.data.federated import client_data, load_split
from fl_ext.specs import build_from_spec, spec_to_json

PATH = "data/digits.npz"
CONF = Path(__file__).parents[3] / "conf" / "dataset" / "dvc.yaml"


def _two_versions(root: Path):
    a = init_repo(root / "repo", dataset="digits", remote=root / "remote")
    b = update_repo(root / "repo", transform="drop-class=3")
    return root / "repo", root / "remote", a, b


def _cache_file(repo: Path, md5: str) -> Path:
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _overwrite(path: Path, data: bytes) -> None:
    path.chmod(0o644)  # DVC makes cache files read-only
    path.write_bytes(data)


@pytest.fixture(scope="module", autouse=True)
def _own_site_cache(tmp_path_factory):
    """DVC keeps per-repo indexes under /var/tmp/dvc; keep these tests' in their tmp dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-site")))
        yield


@pytest.fixture(scope="module")
def versions(tmp_path_factory, _own_site_cache):
    """A repo with versions A and B that tests only read."""
    return _two_versions(tmp_path_factory.mktemp("dvc"))


@pytest.fixture
def own_versions(tmp_path):
    """A repo with versions A and B that the test may damage."""
    return _two_versions(tmp_path)


def test_each_rev_gives_its_own_arrays_and_version(versions):
    repo, remote, a, b = versions
    assert a.commit != b.commit and a.md5 != b.md5
    da = DvcDataset(repo=str(repo), rev=a.commit, path=PATH)
    split_a = da.load()
    ref = Digits().load()  # version A is the built-in digits, read back bit for bit
    for side in ("train", "test"):
        assert np.array_equal(getattr(split_a, side).x, getattr(ref, side).x)
        assert np.array_equal(getattr(split_a, side).y, getattr(ref, side).y)
    assert split_a.input_shape == (1, 8, 8) and split_a.num_classes == 10
    assert split_a.train.x.dtype == np.float32

    db = DvcDataset(repo=str(repo), rev=b.commit, path=PATH, num_classes=10)
    split_b = db.load()
    raw_y = Digits().load_raw()[1]
    assert len(split_b.train) + len(split_b.test) == int(np.sum(raw_y != 3))
    assert 3 not in split_b.train.y and split_b.num_classes == 10

    va, vb = da.version(), db.version()
    assert va == DatasetVersion(
        repo=str(repo),
        rev=a.commit,
        commit=a.commit,
        path=PATH,
        md5=a.md5,
        size_bytes=va.size_bytes,
        num_examples=1797,
    )
    assert (vb.commit, vb.md5, vb.num_examples) == (b.commit, b.md5, b.num_examples)
    assert vb.num_examples < va.num_examples and vb.size_bytes < va.size_bytes
    # the md5 is DVC's record in the .dvc file at that commit, and the md5 of the pushed bytes
    for v in (va, vb):
        record = yaml.safe_load(git(repo, "show", f"{v.commit}:{PATH}.dvc"))
        assert record["outs"][0]["md5"] == v.md5 and record["outs"][0]["size"] == v.size_bytes
        pushed = (remote / "files" / "md5" / v.md5[:2] / v.md5[2:]).read_bytes()
        assert hashlib.md5(pushed).hexdigest() == v.md5
    assert va.as_tags()["dataset.dvc.md5"] == a.md5 and "dataset.dvc.rev" in va.as_tags()
    # the split carries the identity (the run's dataset record and version tag)
    assert split_a.provenance["source"] == f"dvc:{repo}:{PATH}"
    assert split_a.provenance["dvc_commit"] == a.commit and split_a.provenance["dvc_md5"] == a.md5
    assert split_a.version == f"md5:{a.md5[:12]}@{a.commit[:12]}" != split_b.version


def test_revs_resolve_to_commits_and_none_is_the_workspace(versions):
    repo, _, a, b = versions
    for rev, commit in (("HEAD~1", a.commit), ("main", b.commit), (None, b.commit)):
        v = DvcDataset(repo=str(repo), rev=rev, path=PATH).version()
        assert v.rev == rev and v.commit == commit
    url = DvcDataset(repo=f"file://{repo}", rev=a.commit, path=PATH)  # through a git clone
    assert (url.version().commit, url.version().md5) == (a.commit, a.md5)


def test_content_hash_of_the_split_is_stable_per_version(versions):
    repo, _, a, b = versions
    first = DvcDataset(repo=str(repo), rev=a.commit, path=PATH).load()
    again = DvcDataset(repo=str(repo), rev="HEAD~1", path=PATH).load()
    other = DvcDataset(repo=str(repo), rev=b.commit, path=PATH).load()
    assert first.content_hash == again.content_hash and len(first.content_hash) == 64
    assert first.content_hash != other.content_hash
    assert np.array_equal(first.train.y, again.train.y)


def test_old_rev_is_served_from_the_remote_after_the_cache_is_deleted(own_versions):
    repo, remote, a, _ = own_versions
    assert DvcDataset(repo=str(repo), path=PATH).version().num_examples < 1797  # moved on to B
    shutil.rmtree(repo / ".dvc" / "cache")
    dataset = DvcDataset(repo=str(repo), rev=a.commit, path=PATH)
    assert np.array_equal(dataset.load().train.x, Digits().load().train.x)
    assert dataset.version().md5 == a.md5
    # it came from the remote: without the remote's copy there is nowhere to read it from
    (remote / "files" / "md5" / a.md5[:2] / a.md5[2:]).unlink()
    with pytest.raises(FileNotFoundError, match=r"neither the DVC cache nor the remote"):
        DvcDataset(repo=str(repo), rev=a.commit, path=PATH).load()


def test_tampered_cache_or_workspace_is_refused(own_versions):
    repo, _, a, b = own_versions
    cached = _cache_file(repo, a.md5)
    data = cached.read_bytes()
    _overwrite(cached, data[:-1] + bytes([data[-1] ^ 1]))  # one bit, still a valid npz
    with pytest.raises(
        ValueError, match=rf"data at {PATH}@{a.commit} does not match its DVC record"
    ):
        DvcDataset(repo=str(repo), rev=a.commit, path=PATH).load()
    # a working-tree file edited without `dvc add` is not what the record says either
    x, y, _ = DvcDataset(repo=str(repo), rev=b.commit, path=PATH).load_raw()
    write_npz(repo / PATH, x[:-1], y[:-1])
    with pytest.raises(ValueError, match=rf"data at {PATH}@workspace does not match"):
        DvcDataset(repo=str(repo), path=PATH).load()


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


X = np.zeros((4, 3, 3), np.uint8)
Y = np.array([0, 1, 2, 1])


@pytest.mark.parametrize(
    ("data", "num_classes", "match"),
    [
        (b"not a zip", None, r"f\.npz@v1 is not an \.npz archive"),
        (_npz(x=X), None, r"has no array 'y'; its arrays are \['x'\]"),
        (_npz(images=X, y=Y), None, r"has no array 'x'"),
        (_npz(x=X, y=Y[:3]), None, "x has 4 examples but y has 3 labels"),
        (_npz(x=X[:, 0], y=Y), None, r"x must be \[N, H, W\] or \[N, C, H, W\]"),
        (_npz(x=X, y=Y[:, None]), None, "y must be a 1-D label vector"),
        (_npz(x=X, y=Y.astype(float)), None, "y must hold integer labels, got dtype float64"),
        (_npz(x=X, y=np.array([0, 1, -1, 1])), None, r"labels in \[-1, 1\]"),
        (_npz(x=X, y=Y), 2, r"labels must lie in \[0, 2\), got labels in \[0, 2\]"),
        (_npz(x=X.astype(np.int64), y=Y), None, "x must be uint8 pixels or floats"),
        (_npz(x=np.full((4, 3, 3), np.nan), y=Y), None, "x holds 36 non-finite values"),
        (_npz(x=np.full((4, 3, 3), 255.0), y=Y), None, r"float x must lie in \[0, 1\]"),
        (_npz(x=X[:0], y=Y[:0]), None, "holds no examples"),
        (_npz(x=X, y=np.zeros(4, int)), None, "needs at least 2 classes"),
        (_npz(x=np.array([None] * 4, dtype=object), y=Y), None, "object .pickled. arrays"),
    ],
)
def test_bad_npz_contents_are_refused_naming_the_problem(data, num_classes, match):
    with pytest.raises(ValueError, match=match):
        parse_npz(data, where="f.npz@v1", num_classes=num_classes)


def test_good_npz_layouts_normalise_to_nchw_in_unit_range():
    source = DvcDataset(repo=".", path="f.npz")
    x, _, k = parse_npz(_npz(x=X + 255, y=Y), where="f")
    assert k == 3 and source.normalise(x).shape == (4, 1, 3, 3)
    assert source.normalise(x).max() == 1.0 and source.normalise(x).dtype == np.float32
    rgb = np.full((4, 3, 5, 5), 0.5, np.float64)
    x, _, _ = parse_npz(_npz(x=rgb, y=Y), where="f", num_classes=10)
    assert source.normalise(x).shape == (4, 3, 5, 5) and source.normalise(x).dtype == np.float32


def test_bad_contents_through_dvc_name_the_file_and_rev(tmp_path):
    repo = init_repo(tmp_path / "repo", remote=tmp_path / "remote").repo
    write_npz(repo / "data/bad.npz", X, np.array([0, 1, 2, 9]))
    with Repo(str(repo)) as dvc_repo:
        dvc_repo.add(str(repo / "data/bad.npz"))
    with pytest.raises(ValueError, match=r"data/bad\.npz@workspace .*labels must lie in \[0, 5\)"):
        DvcDataset(repo=str(repo), path="data/bad.npz", num_classes=5).load()


def test_missing_untracked_and_unknown_rev_are_clear_errors(versions):
    repo = versions[0]
    with pytest.raises(FileNotFoundError, match=r"data/nope\.npz@workspace does not exist"):
        DvcDataset(repo=str(repo), path="data/nope.npz").load()
    with pytest.raises(ValueError, match="is not a revision"):
        DvcDataset(repo=str(repo), rev="no-such-branch", path=PATH).load()
    with pytest.raises(ValueError, match="cannot open DVC repo"):
        DvcDataset(repo=str(repo / "missing"), path=PATH).load()


def test_a_git_tracked_npz_is_not_a_dvc_record(tmp_path):
    repo = tmp_path / "plain"
    repo.mkdir()
    git(repo, "init", "-q")
    write_npz(repo / "f.npz", X, Y)
    git(repo, "add", "f.npz")
    git(repo, "commit", "-q", "-m", "plain")
    with pytest.raises(ValueError, match=r"f\.npz@HEAD .* is not tracked by DVC"):
        DvcDataset(repo=str(repo), rev="HEAD", path="f.npz").load()


def test_a_dvc_repo_without_git_has_no_commit(tmp_path):
    write_npz(tmp_path / "f.npz", X, Y)
    with Repo.init(str(tmp_path), no_scm=True) as dvc_repo:
        dvc_repo.add(str(tmp_path / "f.npz"))
    version = DvcDataset(repo=str(tmp_path), path="f.npz").version()
    assert version.commit is None and version.num_examples == 4
    assert version.md5 == hashlib.md5((tmp_path / "f.npz").read_bytes()).hexdigest()


def test_constructing_is_cheap_and_checks_its_arguments():
    code = (
        "import sys; from fl_ext.data.dvc_source import DvcDataset; "
        "DvcDataset(repo='r', path='d.npz', rev='v1'); assert 'dvc' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for kwargs, match in [
        ({"path": "d.csv"}, "path must name an .npz"),
        ({"path": "/abs/d.npz"}, "relative to the repo root"),
        ({"path": "../d.npz"}, "relative to the repo root"),
        ({"path": "d.npz", "num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"path": "d.npz", "rev": ""}, "rev must be a git revision"),
        ({"path": "d.npz", "test_fraction": 1.0}, "test_fraction"),
    ]:
        with pytest.raises(ValueError, match=match):
            DvcDataset(repo="r", **kwargs)
    with pytest.raises(ValueError, match="repo must be"):
        DvcDataset(repo="", path="d.npz")
    with pytest.raises(ValueError, match=r"repo is not set: give dataset\.repo="):
        DvcDataset(repo="???", path="???")


def test_the_hydra_option_builds_and_clients_check_the_hash(versions):
    repo, _, a, _ = versions
    spec = yaml.safe_load(CONF.read_text())
    assert spec["repo"] == spec["path"] == "???" and spec["rev"] is None
    spec.update(repo=str(repo), path=PATH, rev=a.commit)
    source = build_from_spec(spec, DatasetSource)
    assert isinstance(source, DvcDataset) and source.version().md5 == a.md5
    spec_json = spec_to_json(spec)
    split = load_split(spec_json)
    part = client_data(
        dataset_spec_json=spec_json,
        partition_spec_json=spec_to_json({"_target_": "fl_ext.data.IidPartitioner"}),
        partition_id=0,
        num_partitions=4,
        local_test_fraction=0.1,
        expected_hash=split.content_hash,
    )
    assert part.input_shape == (1, 8, 8) and len(part.train) > 0


def test_transforms_and_republishing(tmp_path):
    y = np.repeat(np.arange(4), 10)
    x = np.zeros((40, 2, 2), np.uint8)
    _, half = apply_transform(x, y, "subsample=0.5")
    assert np.bincount(half).tolist() == [5] * 4
    _, dropped = apply_transform(x, y, "drop-class=2")
    assert 2 not in dropped and dropped.size == 30
    for spec, match in [
        ("drop-class=7", "no example has that label"),
        ("drop-class=a", "expected an integer"),
        ("subsample=1", r"fraction must be in \(0, 1\)"),
        ("shuffle", "is not one of drop-class=..., subsample=..."),
    ]:
        with pytest.raises(ValueError, match=match):
            apply_transform(x, y, spec)
    first = init_repo(tmp_path / "repo", remote=tmp_path / "remote")
    assert init_repo(tmp_path / "repo") == first  # idempotent, keeps the remote
    update_repo(tmp_path / "repo", transform="subsample=0.5")
    with pytest.raises(ValueError, match="already tracks another version"):
        init_repo(tmp_path / "repo")


def test_cli_prints_commit_and_md5(tmp_path, capsys):
    from simulations.dvc_data import main

    assert main(["init", "--repo", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "digits-dvc-remote" / "files").is_dir()  # the default remote
    assert main(["update", "--repo", str(tmp_path / "r"), "--transform", "drop-class=0"]) == 0
    later = capsys.readouterr().out
    fields = dict(line.split(":", 1) for line in later.splitlines())
    assert fields["commit"].strip() == git(tmp_path / "r", "rev-parse", "HEAD")
    assert fields["md5"].strip() != dict(line.split(":", 1) for line in out.splitlines())["md5"]
    assert main(["update", "--repo", str(tmp_path / "r"), "--transform", "bad"]) == 2
