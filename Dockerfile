# necrocode-cancel operator image: multi-stage, dependencies from requirements.lock, non-root.
FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-deps .

FROM python:3.11.7-slim-bookworm
RUN groupadd --gid 10001 necrocode \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin necrocode
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000 8080 8081
ENTRYPOINT ["necrocode-operator"]
