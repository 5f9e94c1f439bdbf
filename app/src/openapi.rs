//! The OpenAPI 3.1 document served at `GET /api/v1/openapi.json` (a stable path).
//!
//! Written by hand: the API is small, and a unit test checks that every route the router serves
//! is documented here.

use serde_json::{Value, json};

fn error_ref() -> Value {
    json!({ "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn err(desc: &str) -> Value {
    let mut v = error_ref();
    v["description"] = desc.into();
    v
}

/// The document.
pub fn document() -> Value {
    let code_param = json!({ "name": "code", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-]{3,32}$" } });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "ladder-app", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Link shortener with click analytics; Ladder's companion app." },
        "paths": {
            "/api/v1/links": { "post": {
                "summary": "Create a link",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CreateLink" } } } },
                "responses": {
                    "201": { "description": "created", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Link" } } } },
                    "400": err("malformed JSON"), "409": err("custom code taken"), "413": err("body too large"),
                    "422": err("invalid URL or code"), "429": err("rate limited (Retry-After)"), "503": err("database unavailable (Retry-After)")
                } } },
            "/api/v1/links/{code}": {
                "parameters": [code_param],
                "get": { "summary": "Show a link", "responses": {
                    "200": { "description": "the link", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Link" } } } },
                    "404": err("unknown code") } },
                "put": { "summary": "Change a link's target (invalidates caches and purges the edge)",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/UpdateLink" } } } },
                    "responses": { "200": { "description": "updated" }, "404": err("unknown code"), "422": err("invalid URL") } },
                "delete": { "summary": "Delete a link (invalidates caches and purges the edge)",
                    "responses": { "204": { "description": "deleted" }, "404": err("unknown code") } }
            },
            "/api/v1/links/{code}/stats": { "parameters": [code_param], "get": { "summary": "Clicks per UTC day", "responses": {
                "200": { "description": "stats", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Stats" } } } },
                "404": err("unknown code") } } },
            "/{code}": { "parameters": [code_param], "get": { "summary": "Redirect to the target (cacheable: Cache-Control, ETag)", "responses": {
                "302": { "description": "redirect" }, "304": { "description": "not modified (If-None-Match)" }, "404": err("unknown code") } } },
            "/healthz": { "get": { "summary": "Liveness", "responses": { "200": { "description": "alive" } } } },
            "/readyz": { "get": { "summary": "Readiness (the data tier answers)", "responses": { "200": { "description": "ready" }, "503": { "description": "not ready" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics (OpenMetrics text)", "responses": { "200": { "description": "metrics" } } } },
            "/load": { "get": { "summary": "Current load over the sliding window", "responses": {
                "200": { "description": "load", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Load" } } } } } } },
            "/api/v1/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI document" } } } }
        },
        "components": { "schemas": {
            "CreateLink": { "type": "object", "required": ["url"], "additionalProperties": false, "properties": {
                "url": { "type": "string", "format": "uri", "description": "http(s) target" },
                "code": { "type": "string", "pattern": "^[A-Za-z0-9_-]{3,32}$", "description": "custom code (optional)" } } },
            "UpdateLink": { "type": "object", "required": ["url"], "additionalProperties": false, "properties": { "url": { "type": "string", "format": "uri" } } },
            "Link": { "type": "object", "properties": { "code": { "type": "string" }, "url": { "type": "string" },
                "createdAt": { "type": "string", "format": "date-time" }, "shortUrl": { "type": "string" } } },
            "Stats": { "type": "object", "properties": { "code": { "type": "string" }, "total": { "type": "integer" },
                "days": { "type": "array", "items": { "type": "object", "properties": { "day": { "type": "string", "format": "date" }, "clicks": { "type": "integer" } } } } } },
            "Load": { "type": "object", "properties": { "windowSeconds": { "type": "integer" }, "requestsPerSecond": { "type": "number" },
                "transactionsPerSecond": { "type": "number" }, "p99Ms": { "type": "number" }, "errorRate": { "type": "number" },
                "requests": { "type": "integer" }, "phase": { "type": "integer" }, "tier": { "type": "string" } } },
            "Error": { "type": "object", "properties": { "error": { "type": "object", "properties": {
                "code": { "type": "string" }, "message": { "type": "string" } } } } }
        } }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn documents_every_route() {
        let doc = super::document();
        for path in [
            "/api/v1/links",
            "/api/v1/links/{code}",
            "/api/v1/links/{code}/stats",
            "/{code}",
            "/healthz",
            "/readyz",
            "/metrics",
            "/load",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} undocumented");
        }
    }
}
