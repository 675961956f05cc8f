"""The extension as Slicer's Extensions Index checks it (issue 19, part 3).

``MedTorch.json`` (the catalog entry submitted to https://github.com/Slicer/ExtensionsIndex)
is validated against the index's JSON schema, vendored in ``Testing/data/extensions_index``
(see its README for origin and licence), and the repository is checked against the index's
network-free data rules: LF line endings, an accepted category, a name that does not start
with "Slicer", ``project()`` equal to the name, icon and screenshot URLs, a licence file at
the root, a repository under 100 MB, and ``EXTENSION_CATEGORY`` equal to the catalog's
category. The checks are MedTorch's own (none of the index's code is copied); each one is
also run on a deliberately broken copy, so that a check that cannot fail is noticed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "extensions_index"
SCHEMA = DATA / "slicer-extension-catalog-entry-schema-v1.0.2.json"
NAME = "MedTorch"
SIZE_LIMIT_BYTES = 100 * 1024 * 1024
LICENCE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")


def accepted_categories() -> list[str]:
    return json.loads((DATA / "accepted_categories.json").read_text(encoding="utf-8"))["categories"]


# --------------------------------------------------------------------------- checks
# Each returns a list of problems, each a sentence that says what is wrong and what to do.


def schema_problems(entry: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(entry), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"catalog entry does not match the index schema at {where}: {error.message}; "
                        f"fix {NAME}.json to follow {SCHEMA.name}")
    expected = schema.get("$id", "")
    if entry.get("$schema") != expected:
        problems.append(f"$schema is {entry.get('$schema')!r}; set it to {expected!r} (the schema version checked here)")
    return problems


def line_ending_problems(path: Path) -> list[str]:
    data = path.read_bytes()
    if b"\r" in data:
        return [f"{path.name} contains CR or CRLF line endings; convert it to LF only (e.g. dos2unix {path.name})"]
    return []


def category_problems(entry: dict) -> list[str]:
    category = entry.get("category")
    if category not in accepted_categories():
        return [f"category {category!r} is not one the Extensions Index accepts; use one of "
                f"{', '.join(accepted_categories())}"]
    return []


def name_problems(name: str) -> list[str]:
    if name.lower().startswith("slicer"):
        return [f"extension name {name!r} starts with 'Slicer'; the index wants it without the prefix "
                f"({name[6:]!r}) and only the git repository name starting with 'Slicer'"]
    return []


def scm_problems(entry: dict) -> list[str]:
    url = entry.get("scm_url", "")
    problems = []
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("git", "https"):
        problems.append(f"scm_url {url!r} must be a git:// or https:// URL of the repository")
    repo_name = Path(parts.path.rstrip("/")).stem
    if not repo_name.startswith(("Slicer", "SlicerExtension-", "SlicerExtension_")):
        problems.append(f"the repository named by scm_url ({repo_name!r}) should start with 'Slicer'; rename it")
    if not entry.get("scm_revision"):
        problems.append("scm_revision is missing; name the branch, tag or commit to build")
    return problems


def _cmake_value(text: str, variable: str) -> str | None:
    match = re.search(r'set\s*\(\s*' + variable + r'\s+"([^"]*)"\s*\)', text, re.IGNORECASE)
    return match.group(1) if match else None


def _raw_url_path(url: str, owner_repo: str) -> str | None:
    """The path inside the repository that a raw.githubusercontent.com URL of it names."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc != "raw.githubusercontent.com":
        return None
    segments = parts.path.strip("/").split("/")
    if "/".join(segments[:2]) != owner_repo or len(segments) < 4:
        return None
    return "/".join(segments[3:])


def cmake_problems(repo: Path, name: str, entry: dict) -> list[str]:
    cmake = repo / "CMakeLists.txt"
    if not cmake.is_file():
        return ["no CMakeLists.txt at the repository root; the index builds the extension from it"]
    text = re.sub(r"#[^\n]*", "", cmake.read_text(encoding="utf-8"))
    problems = []
    project = re.search(r"project\s*\(\s*([^\s)]+)", text, re.IGNORECASE)
    if not project:
        problems.append("CMakeLists.txt has no project() declaration; add project(%s)" % name)
    elif project.group(1).strip("\"'") != name:
        problems.append(f"CMakeLists.txt declares project({project.group(1)}) but the catalog entry is {name}.json; "
                        f"make them the same")
    category = _cmake_value(text, "EXTENSION_CATEGORY")
    if category != entry.get("category"):
        problems.append(f"EXTENSION_CATEGORY is {category!r} but {name}.json's category is {entry.get('category')!r}; "
                        f"make them agree")
    owner_repo = urllib.parse.urlsplit(entry.get("scm_url", "")).path.strip("/").removesuffix(".git")
    icon = _cmake_value(text, "EXTENSION_ICONURL")
    screenshots = (_cmake_value(text, "EXTENSION_SCREENSHOTURLS") or "").split()
    if not icon:
        problems.append("CMakeLists.txt sets no EXTENSION_ICONURL; set it to the URL of a PNG icon")
    if not screenshots:
        problems.append("CMakeLists.txt sets no EXTENSION_SCREENSHOTURLS; set it to URLs of screenshots")
    for label, url in [("EXTENSION_ICONURL", icon)] + [("EXTENSION_SCREENSHOTURLS", u) for u in screenshots]:
        if not url:
            continue
        if not url.startswith(("http://", "https://")) or not url.lower().endswith(IMAGE_SUFFIXES):
            problems.append(f"{label} {url!r} is not an http(s) URL of a .png/.jpg/.gif image")
            continue
        path = _raw_url_path(url, owner_repo)
        if path is not None and not (repo / path).is_file():
            problems.append(f"{label} {url!r} names {path}, which is not in this repository; add the image or fix the URL")
    depends = _cmake_value(text, "EXTENSION_DEPENDS")
    cmake_deps = [] if depends in (None, "NA") else depends.replace(";", " ").split()
    if sorted(cmake_deps) != sorted(entry.get("build_dependencies", [])):
        problems.append(f"EXTENSION_DEPENDS ({depends!r}) and {name}.json's build_dependencies "
                        f"({entry.get('build_dependencies')}) differ; list the same extensions in both")
    homepage = _cmake_value(text, "EXTENSION_HOMEPAGE")
    if homepage and owner_repo and homepage.rstrip("/") != f"https://github.com/{owner_repo}":
        problems.append(f"EXTENSION_HOMEPAGE {homepage!r} is not the repository that scm_url names ({owner_repo})")
    return problems


def licence_problems(repo: Path) -> list[str]:
    if any((repo / n).is_file() for n in LICENCE_NAMES):
        return []
    return [f"no licence file at the repository root; add one named {' or '.join(LICENCE_NAMES[:2])} "
            f"(MedTorch is Apache-2.0)"]


def tracked_size(repo: Path) -> int | None:
    """Bytes of the files git tracks under ``repo``; None when ``repo`` is not a git checkout."""
    if shutil.which("git") is None:
        return None
    result = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True)
    if result.returncode != 0:
        return None
    total = 0
    for name in result.stdout.decode("utf-8", "surrogateescape").split("\0"):
        path = repo / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def size_problems(size: int, limit: int = SIZE_LIMIT_BYTES) -> list[str]:
    if size > limit:
        return [f"the repository holds {size / 2**20:.1f} MB of tracked files, over the index's "
                f"{limit / 2**20:.0f} MB limit; move large data out (e.g. to a release asset)"]
    return []


def index_problems(repo: Path, name: str = NAME) -> list[str]:
    """Every network-free Extensions Index problem of the extension in ``repo``."""
    entry_path = repo / f"{name}.json"
    if not entry_path.is_file():
        return [f"no {name}.json at the repository root; add the catalog entry"]
    try:
        entry = json.loads(entry_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [f"{name}.json is not valid JSON ({exc}); fix it"]
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return (schema_problems(entry, schema) + line_ending_problems(entry_path) + category_problems(entry)
            + name_problems(name) + scm_problems(entry) + cmake_problems(repo, name, entry)
            + licence_problems(repo))


# --------------------------------------------------------------------------- the repository


def test_catalog_entry_passes_the_index_checks():
    pytest.importorskip("jsonschema", reason="pip install -e .[test] (jsonschema validates against the index schema)")
    assert index_problems(REPO) == []


def test_catalog_entry_declares_pytorch_and_matches_the_schema_version():
    entry = json.loads((REPO / f"{NAME}.json").read_text(encoding="utf-8"))
    assert entry["build_dependencies"] == ["PyTorch"]
    assert "v1.0.2" in entry["$schema"]
    assert entry["scm_url"].startswith("https://github.com/")


def test_licence_is_apache_2():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert b"\r" not in (REPO / "LICENSE").read_bytes()


def test_repository_is_under_100_mb():
    size = tracked_size(REPO)
    if size is None:
        pytest.skip("not a git checkout: the size of the tracked files cannot be measured")
    assert size > 0
    assert size_problems(size) == []


def test_vendored_schema_is_the_recorded_one():
    import hashlib

    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert digest in (DATA / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- each check can fail


@pytest.fixture
def copy(tmp_path):
    """A copy of the files the checks read, to break one at a time."""
    for name in (f"{NAME}.json", "CMakeLists.txt", "LICENSE"):
        shutil.copy2(REPO / name, tmp_path / name)
    for rel in ("Resources/Icons/MedTorch.png", "Resources/Screenshots"):
        src = REPO / rel
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, tmp_path / rel)
        else:
            shutil.copy2(src, tmp_path / rel)
    pytest.importorskip("jsonschema", reason="pip install -e .[test]")
    assert index_problems(tmp_path) == []
    return tmp_path


def _edit_entry(folder: Path, **changes):
    path = folder / f"{NAME}.json"
    entry = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    path.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")


def _edit_cmake(folder: Path, old: str, new: str):
    path = folder / "CMakeLists.txt"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def _one(problems: list[str], *words: str) -> str:
    hits = [p for p in problems if all(w in p for w in words)]
    assert hits, f"expected a problem mentioning {words}, got {problems}"
    return hits[0]


def test_schema_check_fails_on_unknown_key_and_missing_scm_url(copy):
    _edit_entry(copy, homepage="https://example.org", scm_url=None)
    problems = index_problems(copy)
    _one(problems, "schema", "homepage")
    _one(problems, "schema", "scm_url")


def test_schema_check_fails_on_wrong_type(copy):
    _edit_entry(copy, build_dependencies="PyTorch")
    _one(index_problems(copy), "build_dependencies", "not of type 'array'")


def test_line_ending_check_fails_on_crlf(copy):
    path = copy / f"{NAME}.json"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    _one(index_problems(copy), "CRLF", "LF only")


def test_category_check_fails_on_unknown_category_and_disagreement(copy):
    _edit_entry(copy, category="Deep Learning")
    problems = index_problems(copy)
    _one(problems, "'Deep Learning'", "not one the Extensions Index accepts")
    _one(problems, "EXTENSION_CATEGORY", "agree")


def test_category_must_agree_even_when_both_are_accepted(copy):
    _edit_cmake(copy, 'set(EXTENSION_CATEGORY "Registration")', 'set(EXTENSION_CATEGORY "Segmentation")')
    assert [p for p in index_problems(copy)] == [_one(index_problems(copy), "EXTENSION_CATEGORY", "'Segmentation'")]


def test_name_check_fails_on_slicer_prefix(copy):
    shutil.move(copy / f"{NAME}.json", copy / "SlicerMedTorch.json")
    problems = index_problems(copy, name="SlicerMedTorch")
    _one(problems, "starts with 'Slicer'")
    _one(problems, "project(MedTorch)", "SlicerMedTorch.json")


def test_project_check_fails_on_other_name(copy):
    _edit_cmake(copy, "project(MedTorch)", "project(MedTorchExtension)")
    _one(index_problems(copy), "project(MedTorchExtension)")


def test_icon_and_screenshot_checks_fail(copy):
    _edit_cmake(copy, "set(EXTENSION_ICONURL", "set(EXTENSION_ICON_URL")
    (copy / "Resources/Screenshots/EnhanceSR.png").unlink()
    problems = index_problems(copy)
    _one(problems, "no EXTENSION_ICONURL")
    _one(problems, "EnhanceSR.png", "not in this repository")


def test_scm_check_fails_on_ssh_url(copy):
    _edit_entry(copy, scm_url="ssh://git@github.com/medtorch/MedTorch.git", scm_revision=None)
    problems = index_problems(copy)
    _one(problems, "git:// or https://")
    _one(problems, "should start with 'Slicer'")
    _one(problems, "scm_revision is missing")


def test_dependency_check_fails_when_cmake_and_entry_differ(copy):
    _edit_entry(copy, build_dependencies=[])
    _one(index_problems(copy), "EXTENSION_DEPENDS", "differ")


def test_licence_check_fails_without_licence(copy):
    (copy / "LICENSE").unlink()
    _one(index_problems(copy), "no licence file")


def test_size_check_fails_over_the_limit_and_skips_outside_git(tmp_path):
    assert tracked_size(tmp_path) is None  # not a git checkout: the test skips, not fails
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "big.bin").write_bytes(b"\0" * 5000)
    (tmp_path / "untracked.bin").write_bytes(b"\0" * 100000)
    subprocess.run(["git", "-C", str(tmp_path), "add", "big.bin"], check=True)
    size = tracked_size(tmp_path)
    assert size == 5000
    _one(size_problems(size, limit=4096), "over the index's")
    assert size_problems(size, limit=8192) == []
