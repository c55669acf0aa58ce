//! The OpenAPI 3.1 document a server serves at `GET /openapi.json`, written for what it
//! serves: its endpoints, dimensions, number of answers and limits, so that every
//! request the schemas allow is answered with 200 and every other one with a 4xx.

use serde_json::{json, Value};

use crate::api::{Limits, DEFAULT_K, MAX_ABS_VALUE, MIN_COMPONENT};
use crate::service::Service;

/// A JSON response with `schema`.
fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

/// A POST operation taking and returning JSON, with every error it can answer.
fn post(id: &str, summary: &str, request: Value, response: Value) -> Value {
    let error = |what: &str| json_response(what, json!({ "$ref": "#/components/schemas/Error" }));
    json!({ "post": {
        "operationId": id,
        "summary": summary,
        "requestBody": { "required": true, "content": { "application/json": { "schema": request } } },
        "responses": {
            "200": json_response("success", response),
            "400": error("malformed JSON"),
            "413": error("request body over the size limit"),
            "415": error("not a JSON body"),
            "422": error("JSON of the wrong shape or values: dimension, range, k, keys, number of queries"),
            "500": error("the computation failed"),
            "503": error("timed out, or shutting down"),
        }
    }})
}

/// A request body: an object of exactly `properties`, `required` among them.
fn object(properties: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "additionalProperties": false, "required": required, "properties": properties })
}

/// The document for `service` under `limits`.
pub fn document(service: &Service, limits: &Limits) -> Value {
    let dim_out = service.dim_out();
    let queries =
        |items: Value| json!({ "type": "array", "minItems": 1, "maxItems": limits.max_queries, "items": items });
    let out_vector =
        json!({ "type": "array", "minItems": dim_out, "maxItems": dim_out, "items": { "type": "number" } });
    let k = |n: usize| {
        json!({ "type": "integer", "minimum": 1, "maximum": n, "default": DEFAULT_K.min(n),
                "description": "answers per query" })
    };
    let search_response = json!({ "type": "object", "required": ["results"], "properties": {
        "results": { "type": "array", "description": "per query, its best answers, best first",
                     "items": { "type": "array", "items": { "$ref": "#/components/schemas/Hit" } } } } });
    let mut paths = serde_json::Map::new();
    match service {
        Service::Model(m) => {
            let dim = m.projector.dim_in();
            let mut vector = json!({ "type": "array", "minItems": dim, "maxItems": dim,
                "items": { "type": "number", "minimum": -MAX_ABS_VALUE, "maximum": MAX_ABS_VALUE } });
            if m.routed() {
                vector["contains"] = json!({ "anyOf": [
                    { "type": "number", "minimum": MIN_COMPONENT }, { "type": "number", "maximum": -MIN_COMPONENT } ] });
                vector["description"] = json!(
                    "a query; the model routes by cosine, so one value at least must \
                     have a magnitude of 1e-6 or more"
                );
            }
            let mut properties = json!({ "vectors": queries(vector) });
            let mut required = vec!["vectors"];
            if m.keyed() {
                properties["keys"] = queries(json!({ "type": "string" }));
                properties["keys"]["description"] = json!("one tree id or path per query, as many as vectors");
                required.push("keys");
            }
            let project_response = json!({ "type": "object", "required": ["vectors"], "properties": { "vectors": { "type": "array", "items": out_vector } } });
            let summary = format!("project {dim}-d queries with the `{}` model", m.projector.kind());
            paths.insert(
                "/project".into(),
                post("project", &summary, object(properties.clone(), &required), project_response),
            );
            if let Some(answers) = &m.answers {
                properties["k"] = k(answers.index.len());
                let summary = "project queries, then find the stored answers nearest by cosine";
                paths.insert("/search".into(), post("search", summary, object(properties, &required), search_response));
            }
        }
        Service::Index(s) => {
            let texts = json!({ "texts": queries(json!({ "type": "string" })) });
            let mut embed_vector = out_vector;
            embed_vector["type"] = json!(["array", "null"]);
            let embed_response = json!({ "type": "object", "required": ["vectors"], "properties": { "vectors": {
                "type": "array", "items": embed_vector,
                "description": "per text, its vector as searched; null for a text with no known token" } } });
            paths.insert(
                "/embed".into(),
                post(
                    "embed",
                    "embed texts as the index searches them",
                    object(texts.clone(), &["texts"]),
                    embed_response,
                ),
            );
            let mut properties = texts;
            properties["k"] = k(s.len());
            let summary = "find the answers nearest to each text (none for a text with no known token)";
            paths.insert("/search".into(), post("search", summary, object(properties, &["texts"]), search_response));
        }
    }
    let get = |id: &str, summary: &str, response: Value| {
        json!({ "get": {
        "operationId": id, "summary": summary, "responses": { "200": response } } })
    };
    let health = json!({ "type": "object", "required": ["status", "kind", "input", "dim_out"], "properties": {
        "status": { "const": "ok" },
        "kind": { "type": ["string", "null"] },
        "input": { "enum": ["vectors", "texts"] },
        "dim_in": { "type": ["integer", "null"] },
        "dim_out": { "type": "integer" },
        "answers": { "type": ["integer", "null"] } } });
    paths.insert("/health".into(), get("health", "liveness and what is served", json_response("serving", health)));
    let metrics = json!({ "description": "Prometheus text format 0.0.4",
                          "content": { "text/plain": { "schema": { "type": "string" } } } });
    paths.insert("/metrics".into(), get("metrics", "counters and latency histograms", metrics));
    let openapi = json_response("this document", json!({ "type": "object" }));
    paths.insert("/openapi.json".into(), get("openapi", "this OpenAPI document", openapi));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "projroute serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("Serving {}. Bodies up to {} bytes, {} queries per request, {} ms per request.",
                service.describe(), limits.max_body_bytes, limits.max_queries, limits.timeout.as_millis()),
        },
        "paths": paths,
        "components": { "schemas": {
            "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
            "Hit": { "type": "object", "required": ["id", "score", "text"], "properties": {
                "id": { "type": "integer" },
                "score": { "type": "number", "description": "cosine similarity" },
                "text": { "type": ["string", "null"] } } },
        } },
    })
}
