"""docker/Dockerfile read as text (no Docker engine here): non-root, no secrets, entry points present,
build context complete, run options documented."""

from __future__ import annotations

import fnmatch
import json
import re

import pytest

from dstorm3d.utils.paths import REPO_ROOT

DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKER_README = REPO_ROOT / "docker" / "README.md"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of the Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    out = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        out.append((keyword.upper(), arguments.strip()))
    return out


def of(keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions() if name == keyword]


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_image_runs_as_an_unprivileged_user():
    users = of("USER")
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # the USER comes after the last RUN that needs root
    names = [name for name, _ in instructions()]
    last_user = max(i for i, n in enumerate(names) if n == "USER")
    assert last_user > max(i for i, n in enumerate(names) if n == "RUN")


def test_no_secret_is_baked_into_the_image():
    for keyword in ("ENV", "ARG", "LABEL"):
        for arguments in of(keyword):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", arguments) + arguments.split()[:1]:
                assert not SECRET_NAME.search(name), f"{keyword} {arguments!r} sets a secret"
    text = DOCKERFILE.read_text()
    assert "WANDB_API_KEY=" not in text and not re.search(r"\b[0-9a-f]{40}\b", text)  # a W&B key is 40 hex


def test_entry_point_and_default_command_name_files_of_the_repository():
    (entrypoint,) = of("ENTRYPOINT")
    (command,) = of("CMD")
    assert json.loads(entrypoint) == ["python"]
    command = json.loads(command)
    assert (REPO_ROOT / command[0]).is_file(), command
    assert of("WORKDIR")[-1] == "/app"
    volumes = " ".join(of("VOLUME"))
    assert "/data" in volumes and "/app/logs" in volumes


def test_everything_copied_exists_and_is_in_the_build_context():
    patterns = ignore_patterns()
    assert {".git", ".venv"} <= set(patterns)
    copied: list[str] = []
    for arguments in of("COPY"):
        parts = [p for p in arguments.split() if not p.startswith("--")]
        copied += parts[:-1]
    assert {"train.py", "infer.py", "configs", "dstorm3d", "models", "pyproject.toml", "README.md"} <= set(
        copied
    )
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        excluded = [p for p in patterns if fnmatch.fnmatch(source, p.rstrip("/"))]
        assert not excluded, f"COPY {source} is excluded from the build context by .dockerignore {excluded}"
    assert "pip install" in " ".join(of("RUN")) and any(" . " in f" {r} " for r in of("RUN"))


def test_the_readme_documents_building_and_running_with_gpus():
    text = DOCKER_README.read_text()
    for needle in (
        "docker build -f docker/Dockerfile",
        "--gpus all",
        "--ipc=host",
        "/dev/shm",
        "WANDB_API_KEY",
        "DSTORM3D_SHARED_DATA",
        "/app/logs",
        "/data",
        "train.py",
        "infer.py",
    ):
        assert needle in text, f"docker/README.md does not mention {needle}"


README_MODULES = sorted(set(re.findall(r"-m (dstorm3d(?:\.\w+)+)", DOCKER_README.read_text())))


@pytest.mark.parametrize("module", README_MODULES)
def test_modules_run_in_the_readme_exist(module):
    path = REPO_ROOT.joinpath(*module.split("."))
    assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module
