"""The Dockerfile and compose file, read statically (no Docker engine on qmsflow's machines)."""

from __future__ import annotations

import re

import yaml

from qmsflow.settings import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "deploy" / "docker"
PINNED = re.compile(r"^[^@\s]+(@sha256:[a-f0-9]{64}|:(?!latest$)[\w][\w.-]*)$")


class TestDockerfile:
    def test_base_image_is_pinned(self) -> None:
        """The base image names an exact Python patch release."""
        text = (DOCKER / "Dockerfile").read_text("utf-8")
        (default,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
        assert PINNED.match(default) and re.search(r":3\.11\.\d+-", default)

    def test_runs_as_non_root(self) -> None:
        """The final stage switches to the unprivileged uid the chart runs as."""
        text = (DOCKER / "Dockerfile").read_text("utf-8")
        assert re.findall(r"^USER (\S+)$", text, re.MULTILINE) == ["${UID}:${UID}"]
        assert "ARG UID=10001" in text


class TestCompose:
    def test_images_are_pinned_and_qmsflow_runs_unprivileged(self) -> None:
        """Every third-party image is pinned; qmsflow services run read-only as uid 10001."""
        services = yaml.safe_load((DOCKER / "compose.yaml").read_text("utf-8"))["services"]
        for name, service in services.items():
            image = service["image"]
            if image.startswith("${QMSFLOW_IMAGE"):
                assert service["user"] == "10001:10001" and service["read_only"] is True, name
            else:
                assert PINNED.match(image), f"{name}: {image}"
