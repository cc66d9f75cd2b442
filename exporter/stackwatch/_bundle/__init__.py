"""The monitoring bundle (Prometheus rules, Alertmanager config, Grafana dashboards) as package data of an installed wheel; in a source checkout, the top-level folders are used."""
