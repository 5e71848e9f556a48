"""The ERP routing table: which ERP adapter instance applies the commands of which site.

Pure: no network, no Kafka, no environment. The table is data (the TOML file
`QMSFLOW_ERP_ROUTES_FILE` names, example in `connectors/erp_adapter/routes.example.toml`),
validated at start-up. Without a table there is one route, `default`, built from the
`QMSFLOW_ERP_*` settings, that takes every site: the single-ERP configuration.

Each route is one adapter instance with its own consumer group, mapping, circuit breaker and
dead-letter stage, so one ERP being down never pauses another's commands
(docs/erp-adapter.md, "Several ERPs").
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qmsflow.errors import ConfigurationError, ContractError

__all__ = [
    "ANY_SITE",
    "DEFAULT_ROUTE",
    "ErpRoute",
    "ErpUnroutedError",
    "RoutingTable",
    "load_routing_table",
    "parse_routing_table",
    "single_route",
]

#: a route listing this site takes every site no other route lists
ANY_SITE = "*"
#: the route's name when there is no routing table (QMSFLOW_ERP_BASE_URL alone)
DEFAULT_ROUTE = "default"


class ErpUnroutedError(ContractError):
    """A command's site is in no route of the table (and no route takes every site)."""

    reason_code = "erp-unrouted"


class ErpRoute(BaseModel):
    """One ERP: the sites whose commands it applies and how to reach it.

    Unset optional fields fall back to the `QMSFLOW_ERP_*` settings of the same name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    sites: tuple[str, ...] = Field(min_length=1)
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    #: the environment variable holding this ERP's bearer token (a secret never sits in the file)
    token_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    mapping_file: Path | None = None
    timeout: float | None = Field(default=None, gt=0)
    breaker_failures: int | None = Field(default=None, ge=1)
    breaker_cooldown: float | None = Field(default=None, ge=0)

    @property
    def takes_any_site(self) -> bool:
        """Whether this route takes the sites no other route lists."""
        return ANY_SITE in self.sites


class RoutingTable(BaseModel):
    """Every route; a site belongs to at most one, at most one route takes the rest (`*`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    route: tuple[ErpRoute, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_owner_per_site(self) -> RoutingTable:
        names = [r.name for r in self.route]
        if len(names) != len(set(names)):
            raise ValueError(f"route names must be unique, got {names}")
        owners: dict[str, str] = {}
        for r in self.route:
            for site in r.sites:
                if site in owners:
                    raise ValueError(
                        f"site {site!r} is routed to both {owners[site]!r} and {r.name!r}"
                    )
                owners[site] = r.name
        return self

    def __getitem__(self, name: str) -> ErpRoute:
        for r in self.route:
            if r.name == name:
                return r
        raise KeyError(f"no ERP route {name!r}; routes: {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        """The route names, in table order."""
        return tuple(r.name for r in self.route)

    def route_for(self, site: str) -> ErpRoute | None:
        """The route applying `site`'s commands; None when no route takes it."""
        catch_all = None
        for r in self.route:
            if site in r.sites:
                return r
            if r.takes_any_site:
                catch_all = r
        return catch_all

    def dead_letters_unrouted(self, route: ErpRoute) -> bool:
        """Whether `route` dead-letters the commands no route takes: the first route does.

        Every instance reads every command; exactly one must report a site nobody applies, or
        the command would be skipped by all of them in silence.
        """
        return route.name == self.route[0].name


def single_route(base_url: str | None) -> RoutingTable:
    """The table without a routing file: one route taking every site."""
    return RoutingTable(
        version=1, route=(ErpRoute(name=DEFAULT_ROUTE, sites=(ANY_SITE,), base_url=base_url),)
    )


def parse_routing_table(document: dict[str, Any], origin: str) -> RoutingTable:
    """Validate a parsed routing file; relative mapping files are relative to `origin`'s folder."""
    try:
        table = RoutingTable.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{origin}: the ERP routing table is invalid: {exc}") from exc
    base = Path(origin).parent
    return table.model_copy(
        update={
            "route": tuple(
                r.model_copy(update={"mapping_file": base / r.mapping_file})
                if r.mapping_file is not None and not r.mapping_file.is_absolute()
                else r
                for r in table.route
            )
        }
    )


def load_routing_table(path: Path) -> RoutingTable:
    """Read and validate the routing file at `path`."""
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read the ERP routing table: {exc}") from exc
    return parse_routing_table(document, str(path))
