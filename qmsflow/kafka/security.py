"""How qmsflow's Kafka clients authenticate and encrypt: settings to librdkafka and Faust terms.

Both mappings read the same five settings (QMSFLOW_KAFKA_SECURITY_PROTOCOL, _SASL_MECHANISM,
_SASL_USERNAME, _SASL_PASSWORD, _SSL_CA_LOCATION) and check them the same way first, so a
confluent-kafka client and the Faust worker can never disagree about how to reach the cluster.
A wrong combination is a ConfigurationError at start-up, never a silent plaintext connection.

The librdkafka dict carries the password in clear (librdkafka needs it so); it is meant for a
client's constructor, not for a log line. qmsflow's log formatters redact `sasl.password` values
should one be logged anyway.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from qmsflow.errors import ConfigurationError
from qmsflow.settings import Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = ["faust_broker_credentials", "librdkafka_security"]

_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})


def librdkafka_security(settings: Settings) -> dict[str, Any]:
    """The security part of a confluent-kafka client config; merge it into every client's.

    PLAINTEXT gives `{}`, so the local stack's configs are unchanged. Raises ConfigurationError
    for an inconsistent combination (see `faust_broker_credentials`).
    """
    _check(settings)
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security.protocol": protocol}
    if protocol in _TLS_PROTOCOLS and settings.kafka_ssl_ca_location is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_location)
    if protocol in _SASL_PROTOCOLS:
        assert settings.kafka_sasl_password is not None  # _check guarantees it
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    return config


def faust_broker_credentials(settings: Settings) -> CredentialsT | None:
    """What `faust.App(broker_credentials=…)` needs; None for PLAINTEXT.

    TLS protocols get an `ssl.SSLContext` trusting QMSFLOW_KAFKA_SSL_CA_LOCATION (else the
    system's trust store), with hostname checking on. Raises ConfigurationError when a SASL
    protocol lacks its mechanism, username or password, when SASL settings are given with a
    protocol that does not use them, when a CA file is given with a protocol without TLS, or
    when the CA file cannot be read.
    """
    import faust  # here, not at the top: the sink and the CLI need no Faust import

    _check(settings)
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = _ssl_context(settings) if protocol in _TLS_PROTOCOLS else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert settings.kafka_sasl_password is not None  # _check guarantees it
    # faust picks SASL_SSL when given a context and SASL_PLAINTEXT otherwise
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=context,
    )


def _check(settings: Settings) -> None:
    """Raise ConfigurationError unless the five security settings agree with each other."""
    protocol = settings.kafka_security_protocol
    where = f"QMSFLOW_KAFKA_SECURITY_PROTOCOL={protocol}"
    secret = settings.kafka_sasl_password
    password = None if secret is None else secret.get_secret_value()
    sasl = {
        "QMSFLOW_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "QMSFLOW_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "QMSFLOW_KAFKA_SASL_PASSWORD": password,
    }
    if protocol in _SASL_PROTOCOLS:
        missing = [variable for variable, value in sasl.items() if not value]
        if missing:
            raise ConfigurationError(
                f"{where} needs {', '.join(missing)}; "
                f"{'it is' if len(missing) == 1 else 'they are'} unset or empty"
            )
    else:
        stray = [variable for variable, value in sasl.items() if value is not None]
        if stray:
            raise ConfigurationError(
                f"{', '.join(stray)} set, but {where} does not use SASL; "
                "expected SASL_PLAINTEXT or SASL_SSL, or leave the SASL settings unset"
            )
    if protocol not in _TLS_PROTOCOLS and settings.kafka_ssl_ca_location is not None:
        raise ConfigurationError(
            f"QMSFLOW_KAFKA_SSL_CA_LOCATION={settings.kafka_ssl_ca_location} set, but {where} "
            "does not use TLS; expected SSL or SASL_SSL"
        )


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context verifying the brokers against the configured CA, else the system's."""
    cafile = settings.kafka_ssl_ca_location
    try:
        return ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile is not None else None
        )
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(
            f"QMSFLOW_KAFKA_SSL_CA_LOCATION={cafile}: expected a readable PEM CA bundle, "
            f"got {error}"
        ) from error
