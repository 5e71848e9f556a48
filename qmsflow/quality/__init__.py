"""Pure, typed quality-domain logic: no Kafka, no asyncio, no database."""
