"""The wheel, installed away from the checkout, is a complete and well-behaved package.

The import namespace is ``blobledger.*`` only because ``blobledger/<pkg>`` links to the
top-level folders, and the code reads files next to it (Avro schemas, history included;
SQL migrations). A test run inside the checkout can pass while the wheel misses a file, or
installs top-level ``infra``/``schemas`` packages that shadow a user's own. So the wheel is
built from a copy of this checkout, installed into a fresh venv outside it, and used from
there: by the codec, and by pytest in a scratch project that has its own ``infra`` and
``schemas`` and gets the ``blobledger`` plugin through its entry point.

The fresh venv has no pip and no third-party packages of its own: a ``.pth`` file points
it at a directory of links to this environment's packages, minus any blobledger install
(the editable one points into the checkout), so only the wheel supplies ``blobledger``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

REPO = Path(__file__).resolve().parents[2]
#: what the wheel may hold at its top level besides its metadata
TOP_LEVEL = "blobledger"
#: the file in the new venv that points it at this environment's third-party packages
DEPS_PTH = "zz_blobledger_test_deps.pth"


@dataclass(frozen=True)
class Installed:
    wheel: Path
    #: the copy the wheel was built from: what it must contain
    source: Path
    python: Path
    site: Path
    env: dict[str, str]

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """The new venv's python, isolated (-I: no cwd, no PYTHON* variables, no user site)."""
        return subprocess.run(
            [str(self.python), "-I", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    """Leave out what is not source: hidden files and caches, the venv, build output and,
    at the top, the tests and docs (so the copy is small and the build cannot race a
    build someone runs in the checkout)."""
    skip = {n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith(".pyc")}
    if Path(directory) == REPO:
        skip |= {n for n in names if n in ("build", "dist", "tests", "docs")}
        skip |= {n for n in names if n.endswith(".egg-info")}
    return skip


def _dependency_view(target: Path) -> Path:
    """Links to every entry of this environment's site-packages except blobledger's own
    (its dist-info and the editable finder) and ``.pth`` files."""
    target.mkdir()
    for lib in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(lib).iterdir():
            name = entry.name
            if (
                name.lower().startswith(("blobledger", "__editable__"))
                or name.endswith((".pth", ".egg-link"))
                or name == "__pycache__"
                or (target / name).exists()
            ):
                continue
            (target / name).symlink_to(entry)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(REPO), "the install must live outside the checkout"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "PYTEST_", "VIRTUAL_ENV", "BLOBLEDGER_"))
    }

    source = root / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=_copy_ignore)
    dist = root / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("blobledger-*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip_install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    install = subprocess.run(
        [*pip_install, "--no-deps", "--no-index", str(wheel)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    site = Path(
        subprocess.run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    deps = _dependency_view(root / "deps")
    (site / DEPS_PTH).write_text(f"{deps}\n")
    return Installed(wheel, source, python, site, env)


def test_the_wheel_installs_only_the_blobledger_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert whl.read(top_level).decode().split() == [TOP_LEVEL]
    roots = {n.split("/", 1)[0] for n in names if ".dist-info/" not in n}
    assert roots == {TOP_LEVEL}
    # every source file is shipped: package data (schemas, migrations, container files)
    # and subpackages; compared with the copy the wheel was built from
    source_files = set()
    # os.walk, not rglob: blobledger/<pkg> are links, and rglob does not follow them
    for directory, dirs, files in os.walk(installed.source / TOP_LEVEL, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        relative = Path(directory).relative_to(installed.source)
        source_files |= {(relative / f).as_posix() for f in files if not f.endswith(".pyc")}
    assert len(source_files) > 50  # the links were followed
    assert sorted(source_files - set(names)) == []
    # and pip put nothing else next to it
    dist_info = top_level.split("/", 1)[0]
    installed_top = {p.name for p in installed.site.iterdir()} - {DEPS_PTH}
    assert installed_top == {TOP_LEVEL, dist_info}


def test_the_installed_codec_reads_an_event_written_with_a_v1_schema(
    installed: Installed, tmp_path: Path
) -> None:
    from fastavro import parse_schema

    from blobledger.schemas.codec import (
        Codec,
        SchemaVersion,
        _fingerprint,
        _inline,
        _load_json,
    )
    from blobledger.schemas.events import Envelope, ObjectCreated, new_id

    avro = installed.source / "schemas" / "avro"
    named = {"blobledger.Envelope": _load_json(avro / "Envelope.avsc")}
    v1 = parse_schema(_inline(_load_json(avro / "history" / "ObjectCreated.v1.avsc"), named))
    writer = SchemaVersion("blobledger.ObjectCreated", _fingerprint(v1), v1, avro)
    event = ObjectCreated(
        Envelope(object_id=new_id(), actor="alice", expected_version=0, causation_id=new_id()),
        key="a/b.txt",
        metadata_json='{"x":1}',
        tags=["t1", "t2"],
        content_type="text/plain",
    )
    record = event.to_record()
    del record["content_type"]  # the v1 writer had no such field
    message = Codec.encode_with(writer, record)

    script = """
import json, sys
from importlib import resources
import blobledger
from blobledger.schemas.codec import Codec
event = Codec().decode(bytes.fromhex(sys.argv[1]))
migrations = resources.files("blobledger.projectors.migrations").iterdir()
print(json.dumps({
    "file": blobledger.__file__,
    "type": type(event).__name__,
    "key": event.key,
    "tags": event.tags,
    "content_type": event.content_type,
    "migrations": sorted(m.name for m in migrations if m.name.endswith(".sql")),
}))
"""
    done = installed.run("-c", script, message.hex(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert Path(out["file"]).is_relative_to(installed.site)
    assert (out["type"], out["key"], out["tags"]) == ("ObjectCreated", "a/b.txt", ["t1", "t2"])
    assert out["content_type"] is None  # filled from the reader's default
    shipped = sorted(p.name for p in (installed.source / "projectors" / "migrations").glob("*.sql"))
    assert out["migrations"] == shipped and shipped


SCRATCH_TEST = """
import importlib.metadata
from pathlib import Path

import blobledger
import blobledger.producers
import infra
import schemas

SITE = Path({site!r})


def test_own_packages_and_the_blobledger_plugin(pytestconfig):
    here = Path(__file__).parent
    assert infra.WHO == "scratch infra" and Path(infra.__file__).parent.parent == here
    assert schemas.NAME == "scratch schemas" and Path(schemas.__file__).parent == here
    for module in (blobledger, blobledger.producers):
        assert Path(module.__file__).is_relative_to(SITE), module.__file__
    assert pytestconfig.pluginmanager.hasplugin("blobledger")
    plugin = pytestconfig.pluginmanager.get_plugin("blobledger")
    assert Path(plugin.__file__).is_relative_to(SITE)
    dists = [
        d for d in importlib.metadata.distributions() if d.metadata["Name"] == "blobledger"
    ]
    assert [Path(d.locate_file("")) for d in dists] == [SITE]
"""


def test_a_project_with_its_own_infra_and_schemas_runs_the_plugin(
    installed: Installed, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "infra").mkdir(parents=True)
    (project / "infra" / "__init__.py").write_text('WHO = "scratch infra"\n')
    (project / "schemas.py").write_text('NAME = "scratch schemas"\n')
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_scratch.py").write_text(SCRATCH_TEST.format(site=str(installed.site)))
    done = installed.run("-m", "pytest", "-p", "no:cacheprovider", "-q", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
