"""Kafka security settings mapped to librdkafka and Faust terms, validated, and never leaked."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol, SASLMechanism
from pydantic import SecretStr

from qmsflow.errors import ConfigurationError
from qmsflow.kafka.producer import producer_config
from qmsflow.kafka.security import faust_broker_credentials, librdkafka_security
from qmsflow.logging_setup import JsonFormatter, RedactingFormatter
from qmsflow.settings import Settings

#: shaped like a generated SCRAM password, so a leak anywhere is unmistakable
PASSWORD = "s3cr3t-Zq8vX2pLw9"


@pytest.fixture
def ca_file() -> Path:
    """A readable PEM CA bundle (certifi's, which confluent-kafka's registry client brings)."""
    certifi = pytest.importorskip("certifi")
    return Path(certifi.where())


def _sasl(protocol: str = "SASL_SSL", mechanism: str = "SCRAM-SHA-512", **more: Any) -> Settings:
    return Settings(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="qmsflow-sink",
        kafka_sasl_password=PASSWORD,
        **more,
    )


class TestLibrdkafkaSecurity:
    def test_plaintext_adds_nothing(self) -> None:
        """PLAINTEXT, the default, leaves a client config exactly as it was."""
        assert librdkafka_security(Settings()) == {}

    def test_ssl_with_ca(self, ca_file: Path) -> None:
        """SSL sets the protocol and the CA file."""
        settings = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_location=ca_file)
        assert librdkafka_security(settings) == {
            "security.protocol": "SSL",
            "ssl.ca.location": str(ca_file),
        }

    def test_ssl_without_ca_uses_system_store(self) -> None:
        """SSL without a CA file names no CA, so librdkafka uses the system's trust store."""
        settings = Settings(kafka_security_protocol="SSL")
        assert librdkafka_security(settings) == {"security.protocol": "SSL"}

    @pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    def test_sasl_plaintext(self, mechanism: str) -> None:
        """SASL_PLAINTEXT carries the mechanism and the credentials, and no CA."""
        assert librdkafka_security(_sasl("SASL_PLAINTEXT", mechanism)) == {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism,
            "sasl.username": "qmsflow-sink",
            "sasl.password": PASSWORD,
        }

    @pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    def test_sasl_ssl(self, mechanism: str, ca_file: Path) -> None:
        """SASL_SSL carries the mechanism, the credentials and the CA file."""
        settings = _sasl("SASL_SSL", mechanism, kafka_ssl_ca_location=ca_file)
        assert librdkafka_security(settings) == {
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(ca_file),
            "sasl.mechanism": mechanism,
            "sasl.username": "qmsflow-sink",
            "sasl.password": PASSWORD,
        }

    def test_producer_config_merges_security(self) -> None:
        """Every qmsflow producer config carries the security settings."""
        config = producer_config(_sasl())
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.username"] == "qmsflow-sink"
        assert config["enable.idempotence"] is True


class TestFaustBrokerCredentials:
    def test_plaintext_is_none(self) -> None:
        """PLAINTEXT gives no credentials, so faust.App keeps its default."""
        assert faust_broker_credentials(Settings()) is None

    def test_ssl_verifies_against_the_ca(self, ca_file: Path) -> None:
        """SSL gives SSLCredentials whose context verifies certificates and host names."""
        settings = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_location=ca_file)
        credentials = faust_broker_credentials(settings)
        assert isinstance(credentials, faust.SSLCredentials)
        assert credentials.protocol is AuthProtocol.SSL
        context = credentials.context
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.cert_store_stats()["x509_ca"] > 0

    @pytest.mark.parametrize(
        ("mechanism", "expected"),
        [
            ("PLAIN", SASLMechanism.PLAIN),
            ("SCRAM-SHA-256", SASLMechanism.SCRAM_SHA_256),
            ("SCRAM-SHA-512", SASLMechanism.SCRAM_SHA_512),
        ],
    )
    def test_sasl_plaintext(self, mechanism: str, expected: SASLMechanism) -> None:
        """SASL_PLAINTEXT gives SASLCredentials without a TLS context."""
        credentials = faust_broker_credentials(_sasl("SASL_PLAINTEXT", mechanism))
        assert isinstance(credentials, faust.SASLCredentials)
        assert credentials.protocol is AuthProtocol.SASL_PLAINTEXT
        assert credentials.mechanism is expected
        assert credentials.ssl_context is None

    def test_sasl_ssl_reaches_aiokafka(self, ca_file: Path) -> None:
        """SASL_SSL gives aiokafka the protocol, mechanism, credentials and a TLS context."""
        credentials = faust_broker_credentials(_sasl(kafka_ssl_ca_location=ca_file))
        auth = credentials_to_aiokafka_auth(credentials)
        assert auth["security_protocol"] == "SASL_SSL"
        assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
        assert auth["sasl_plain_username"] == "qmsflow-sink"
        assert auth["sasl_plain_password"] == PASSWORD
        assert isinstance(auth["ssl_context"], ssl.SSLContext)

    def test_unreadable_ca_is_a_configuration_error(self, tmp_path: Path) -> None:
        """A CA file that cannot be read stops start-up with the variable and the path."""
        missing = tmp_path / "absent.crt"
        settings = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_location=missing)
        with pytest.raises(ConfigurationError, match="QMSFLOW_KAFKA_SSL_CA_LOCATION") as caught:
            faust_broker_credentials(settings)
        assert str(missing) in str(caught.value)


class TestValidation:
    @pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
    @pytest.mark.parametrize(
        ("unset", "variable"),
        [
            ("kafka_sasl_username", "QMSFLOW_KAFKA_SASL_USERNAME"),
            ("kafka_sasl_password", "QMSFLOW_KAFKA_SASL_PASSWORD"),
            ("kafka_sasl_mechanism", "QMSFLOW_KAFKA_SASL_MECHANISM"),
        ],
    )
    def test_sasl_without_a_credential(self, protocol: str, unset: str, variable: str) -> None:
        """A SASL protocol missing its mechanism, username or password names what is missing."""
        settings = _sasl(protocol).model_copy(update={unset: None})
        for build in (librdkafka_security, faust_broker_credentials):
            with pytest.raises(ConfigurationError, match=variable) as caught:
                build(settings)
            assert protocol in str(caught.value)

    def test_empty_password_counts_as_missing(self) -> None:
        """An empty password (a Secret key with no value) is refused like an unset one."""
        settings = _sasl().model_copy(update={"kafka_sasl_password": SecretStr("")})
        with pytest.raises(ConfigurationError, match="QMSFLOW_KAFKA_SASL_PASSWORD"):
            librdkafka_security(settings)

    @pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
    def test_sasl_mechanism_without_sasl_protocol(self, protocol: str) -> None:
        """A SASL mechanism with a protocol that does not use SASL is refused, not ignored."""
        settings = Settings(kafka_security_protocol=protocol, kafka_sasl_mechanism="PLAIN")
        with pytest.raises(ConfigurationError, match="QMSFLOW_KAFKA_SASL_MECHANISM") as caught:
            librdkafka_security(settings)
        assert f"QMSFLOW_KAFKA_SECURITY_PROTOCOL={protocol}" in str(caught.value)

    def test_credentials_without_sasl_protocol(self) -> None:
        """Credentials with PLAINTEXT are refused: the operator meant SASL and would not get it."""
        settings = Settings(kafka_sasl_username="qmsflow-sink", kafka_sasl_password=PASSWORD)
        with pytest.raises(ConfigurationError, match="does not use SASL") as caught:
            faust_broker_credentials(settings)
        assert PASSWORD not in str(caught.value)

    @pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
    def test_ca_without_tls(self, protocol: str, ca_file: Path) -> None:
        """A CA file with a protocol without TLS is refused rather than connecting in clear."""
        settings = (
            _sasl(protocol, kafka_ssl_ca_location=ca_file)
            if protocol.startswith("SASL")
            else Settings(kafka_security_protocol=protocol, kafka_ssl_ca_location=ca_file)
        )
        with pytest.raises(ConfigurationError, match="does not use TLS"):
            librdkafka_security(settings)

    def test_unknown_protocol_is_rejected_bySettings(self) -> None:
        """A protocol outside the four librdkafka knows fails when the settings are read."""
        with pytest.raises(ValueError, match="kafka_security_protocol"):
            Settings(kafka_security_protocol="TLS")


class TestSecretNeverLeaks:
    def test_settings_repr_and_str_hide_the_password(self) -> None:
        """Neither repr, str nor a JSON dump of the settings shows the SASL password."""
        settings = _sasl()
        for text in (repr(settings), str(settings), settings.model_dump_json()):
            assert PASSWORD not in text
            assert "qmsflow-sink" in text  # the username is not a secret

    def test_faust_credentials_repr_hides_the_password(self) -> None:
        """The Faust credentials object prints the username only."""
        credentials = faust_broker_credentials(_sasl("SASL_PLAINTEXT"))
        assert PASSWORD not in repr(credentials)
        assert PASSWORD not in str(credentials)

    @pytest.mark.parametrize("formatter", [JsonFormatter(), RedactingFormatter()])
    def test_logged_client_config_is_redacted(self, formatter: logging.Formatter) -> None:
        """A client config interpolated into a log line loses its password in either format."""
        config = {"bootstrap.servers": "kafka:9093", **librdkafka_security(_sasl())}
        record = logging.LogRecord(
            "qmsflow.test", logging.INFO, __file__, 1, "client config %r", (config,), None
        )
        line = formatter.format(record)
        assert PASSWORD not in line
        assert "sasl.password" in line
        assert "qmsflow-sink" in line
