"""Checks of the deployment artefacts: the Helm chart, its manifests and the Kafka ACL plan."""
