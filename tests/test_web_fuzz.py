"""A property run of the mailbox API generated from its own OpenAPI document: every
operation, with parameters drawn from their schemas (valid values, stored addresses and ids,
and arbitrary text), against a real web process on MariaDB. No answer may be a 5xx, every
status must be one the document lists for that operation, every error is JSON, and a
200 carries the fields its schema requires.

A generator of our own, not schemathesis: reading the document takes a few dozen lines,
and schemathesis would bring a large tree of pinned dependencies into the test extras."""
from __future__ import annotations

import http.client
import json
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import message, send
from web_client import WebProcess

ADDRESSES = ["fuzz@test.org", "Fuzz2@test.org"]


def resolve(document: dict, node: dict) -> dict:
    while "$ref" in node:
        target = document
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def value_strategy(schema: dict, name: str, known: dict) -> st.SearchStrategy:
    """Values for one parameter: valid ones from its schema, ones we know exist, and junk."""
    junk = st.text(max_size=40)
    if schema.get("type") == "integer":
        valid = st.integers(schema.get("minimum", -2**70), schema.get("maximum", 2**70)).map(str)
        choices = [valid, st.integers(-2**70, 2**70).map(str), junk]
    elif "enum" in schema:
        choices = [st.sampled_from(schema["enum"]), junk]
    else:
        choices = [st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 60)), junk]
    if name in known:
        choices.insert(0, st.sampled_from(known[name]))
    return st.one_of(*choices)


def operations(document: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, operation) for path, item in document["paths"].items()
            for method, operation in item.items()]


def request_strategy(document: dict, known: dict) -> st.SearchStrategy:
    def build(op):
        path, method, operation = op
        parameters = [resolve(document, p) for p in operation.get("parameters", [])]
        values = {}
        for parameter in parameters:
            strategy = value_strategy(parameter.get("schema", {}), parameter["name"], known)
            if not parameter.get("required"):
                strategy = st.none() | strategy
            values[parameter["name"]] = strategy
        return st.tuples(st.just(op), st.fixed_dictionaries(values)) if values else st.tuples(st.just(op), st.just({}))
    return st.sampled_from(operations(document)).flatmap(build)


def call(web, document, op, values) -> tuple[int, str, bytes]:
    path, method, operation = op
    parameters = {p["name"]: p for p in (resolve(document, p) for p in operation.get("parameters", []))}
    url, query, headers = path, {}, {}
    for name, value in values.items():
        if value is None:
            continue
        where = parameters[name]["in"]
        if where == "path":
            url = url.replace("{" + name + "}", quote(value, safe=""))
        elif where == "query":
            query[name] = value
        elif where == "header":
            # http.client sends no CR or LF in a header (nor may any client): those are dropped
            headers[name] = "".join(c for c in value if c.isprintable()).encode("utf-8").decode("latin-1")
    if query:
        url += "?" + urlencode(query)
    conn = http.client.HTTPConnection(web.host, web.port, timeout=15)
    try:
        conn.request(method.upper(), url, headers=headers)
        response = conn.getresponse()
        # An event stream stays open: its status and headers are the answer.
        body = b"" if response.getheader("Content-Type", "").startswith("text/event-stream") else response.read()
        return response.status, response.getheader("Content-Type", ""), body
    finally:
        conn.close()


def test_api_fuzzed_from_its_openapi_document_never_fails(mysql_store, gsmtpd_server, tmp_path):
    server = gsmtpd_server(mysql_store)
    for address in ADDRESSES:
        for n in range(3):
            send(server, "a@example.org", [address], message(subject=f"fuzz {n}", to=address))
    ids = [str(row["mail_id"]) for row in mysql_store.rows()]
    web = WebProcess(tmp_path, mysql_store.url)
    try:
        conn = http.client.HTTPConnection(web.host, web.port, timeout=15)
        conn.request("GET", "/api/openapi.json")
        document = json.loads(conn.getresponse().read())
        conn.close()
        known = {"address": [a.lower() for a in ADDRESSES] + ADDRESSES, "id": ids,
                 "after": ids, "last_event_id": ids, "Last-Event-ID": ids}
        seen_statuses = set()

        @settings(max_examples=400, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(request_strategy(document, known))
        def check(case):
            op, values = case
            status, content_type, body = call(web, document, op, values)
            seen_statuses.add(status)
            assert status < 500, (op[:2], values, status, body)
            assert str(status) in op[2]["responses"], (op[:2], values, status, body)
            if status >= 400:
                assert content_type == "application/json" and json.loads(body)["status"] == status
            elif status == 200 and content_type == "application/json":
                schema = resolve(document, op[2]["responses"]["200"]["content"]["application/json"].get("schema", {}))
                assert set(schema.get("required", ())) <= set(json.loads(body)), (op[:2], body)

        check()
        assert {200, 400, 404} <= seen_statuses          # the run reached the real answers, not only errors
    finally:
        web.stop()
    assert "Traceback" not in web.log()
