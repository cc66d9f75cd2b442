# stackwatch exporter image: slim Python, non-root, healthcheck on /-/healthy.
FROM python:3.11-slim-bookworm

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin stackwatch
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
# The monitoring bundle ships inside the package (stackwatch bundle DIR writes it out).
COPY prometheus ./prometheus
COPY alertmanager/alertmanager.yml ./alertmanager/alertmanager.yml
COPY alertmanager/templates ./alertmanager/templates
COPY grafana ./grafana
COPY examples ./examples
RUN pip install --no-cache-dir . && rm -rf /src/build \
 && mkdir -p /var/lib/stackwatch && chown stackwatch:stackwatch /var/lib/stackwatch
# The state store (heartbeat reports, consistency last-change times) survives the container.
VOLUME /var/lib/stackwatch

USER stackwatch
WORKDIR /tmp
EXPOSE 9938
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9938/-/healthy', timeout=2)"]
ENTRYPOINT ["stackwatch"]
CMD ["--config.file=/etc/stackwatch/stackwatch.yml", "--web.listen-address=:9938", \
     "--storage.path=/var/lib/stackwatch/stackwatch.db"]
