"""The ERP routing table: validation, which route owns a site, who reports an unrouted site."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.erp_adapter.routing import (
    DEFAULT_ROUTE,
    ErpUnroutedError,
    RoutingTable,
    load_routing_table,
    parse_routing_table,
    single_route,
)
from qmsflow.errors import ConfigurationError, ContractError

EXAMPLE = Path(__file__).parents[3] / "connectors" / "erp_adapter" / "routes.example.toml"


def table(*routes: dict[str, object]) -> RoutingTable:
    return parse_routing_table({"version": 1, "route": list(routes)}, "/etc/qmsflow/routes.toml")


def owner(routes: RoutingTable, site: str) -> str | None:
    route = routes.route_for(site)
    return None if route is None else route.name


class TestRouteFor:
    def test_each_site_goes_to_the_route_listing_it(self) -> None:
        """A site listed by a route is that route's, whatever the order."""
        routes = table(
            {"name": "erp-a", "sites": ["BOS1", "RDU2"]}, {"name": "erp-b", "sites": ["DUB1"]}
        )
        assert owner(routes, "BOS1") == "erp-a"
        assert owner(routes, "RDU2") == "erp-a"
        assert owner(routes, "DUB1") == "erp-b"

    def test_an_unlisted_site_has_no_route_without_a_catch_all(self) -> None:
        """A site nobody lists is unrouted; the first route is the one to report it."""
        routes = table({"name": "erp-a", "sites": ["BOS1"]}, {"name": "erp-b", "sites": ["DUB1"]})
        assert routes.route_for("SIN3") is None
        assert routes.dead_letters_unrouted(routes["erp-a"])
        assert not routes.dead_letters_unrouted(routes["erp-b"])

    def test_a_catch_all_route_takes_unlisted_sites_only(self) -> None:
        """`*` takes the sites no other route lists, even when it comes first."""
        routes = table({"name": "main", "sites": ["*"]}, {"name": "erp-eu", "sites": ["DUB1"]})
        assert owner(routes, "DUB1") == "erp-eu"
        assert owner(routes, "BOS1") == "main"

    def test_without_a_table_one_default_route_takes_every_site(self) -> None:
        """The single-ERP configuration is a table of one route for every site."""
        routes = single_route("http://erp.example.com")
        assert routes.names == (DEFAULT_ROUTE,)
        assert routes.route_for("ANY1") is routes[DEFAULT_ROUTE]


class TestValidation:
    def test_a_site_in_two_routes_is_refused(self) -> None:
        """One site, two ERPs would post every hold twice: the start fails, naming both."""
        with pytest.raises(ConfigurationError, match="'BOS1' is routed to both 'a' and 'b'"):
            table({"name": "a", "sites": ["BOS1"]}, {"name": "b", "sites": ["BOS1"]})

    def test_duplicate_names_unknown_fields_and_secrets_in_the_file_are_refused(self) -> None:
        """Route names are unique and the file has no `token` field (tokens come from env)."""
        with pytest.raises(ConfigurationError, match="route names must be unique"):
            table({"name": "a", "sites": ["X"]}, {"name": "a", "sites": ["Y"]})
        with pytest.raises(ConfigurationError, match="token"):
            table({"name": "a", "sites": ["X"], "token": "secret"})

    def test_relative_mapping_files_are_relative_to_the_table(self) -> None:
        """`mapping_file = "m.toml"` next to the table resolves beside it."""
        routes = table({"name": "a", "sites": ["X"], "mapping_file": "m.toml"})
        assert routes["a"].mapping_file == Path("/etc/qmsflow/m.toml")

    def test_the_shipped_example_is_valid(self) -> None:
        """The example in the repository loads, with two routes."""
        routes = load_routing_table(EXAMPLE)
        assert routes.names == ("erp-us", "erp-eu")
        assert routes["erp-eu"].breaker_cooldown == 60.0

    def test_an_unrouted_command_is_a_contract_error_with_its_own_reason(self) -> None:
        """Unrouted commands are dead letters with reason `erp-unrouted`."""
        assert issubclass(ErpUnroutedError, ContractError)
        assert ErpUnroutedError.reason_code == "erp-unrouted"
