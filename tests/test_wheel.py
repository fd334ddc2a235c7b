"""The wheel `python -m build` makes installs with every extra in a fresh virtual environment
and runs `media-registry demo` from there: the schema files ship inside it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.sqlite_only  # the package, not the backend, is under test
@pytest.mark.timeout(900)  # a build and a fresh environment's install
def test_the_built_wheel_installs_with_its_extras_and_runs_the_demo(tmp_path: Path) -> None:
    # No isolation: the build backend comes from the test extra, so nothing is fetched to build.
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((tmp_path / "dist").glob("media_registry-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"media_registry/schema.sql", "media_registry/store/schema_postgres.sql",
            "media_registry/store/pg_notify.sql", "media_registry/py.typed"} <= names

    venv = tmp_path / "fresh"
    # Without a pip of its own: this one installs into it (--python). The dependencies are the test
    # environment's, seen through a .pth line, so the install needs no network (--no-index) and
    # still fails when an extra asks for a package that is not there.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    fresh_site = next(venv.glob("lib/python*/site-packages"))
    (fresh_site / "test-environment.pth").write_text(str(_packages_but_this_one(tmp_path / "deps")) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "--quiet", "--no-index", f"{wheel}[serve,postgres,s3]"],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    demo = subprocess.run([str(venv / "bin" / "media-registry"), "demo"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Done: 7 uploads for 10,006 sends." in demo.stdout
    imported = subprocess.run([str(venv / "bin" / "python"), "-c", "import media_registry, psycopg, boto3, fastapi; "
                               "print(media_registry.__file__)"], capture_output=True, text=True, timeout=120)
    assert str(venv) in imported.stdout, imported.stderr  # the wheel's copy, not the checkout's


def _packages_but_this_one(folder: Path) -> Path:
    """A folder linking every package of the test environment except media-registry itself: were the
    installed copy visible, pip would call the wheel's requirement already satisfied and skip it."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("media_registry", "__editable__")):
            (folder / entry.name).symlink_to(entry)
    return folder
