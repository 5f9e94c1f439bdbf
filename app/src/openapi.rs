//! The OpenAPI 3.1 document served at `GET /api/v1/openapi.json` (a stable path).
//!
//! Paths, methods and answers come from the route table ([`crate::routes::ROUTES`]), so
//! every route served is documented; the schemas below are written by hand (the API is small).

use serde_json::{Map, Value, json};

use crate::routes::{AUTHENTICATED, Access, Answer, LIMITED, ROUTES};

fn answer(a: &Answer) -> Value {
    let mut v = json!({ "description": a.description });
    if let Some(schema) = a.schema {
        v["content"] = json!({ "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } });
    }
    v
}

/// The `paths` object, from the route table.
fn paths() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let mut answers: Vec<&Answer> = r.answers.iter().collect();
        if r.access != Access::Operational {
            answers.extend(LIMITED);
        }
        if r.access == Access::Management {
            answers.extend(AUTHENTICATED);
        }
        let mut responses = Map::new();
        for a in answers {
            // A route's own description of a status wins over the shared one.
            responses
                .entry(a.status.to_string())
                .or_insert_with(|| answer(a));
        }
        let mut op = json!({ "summary": r.summary, "responses": responses });
        if let Some(schema) = r.request {
            op["requestBody"] = json!({ "required": true, "content": { "application/json": {
                "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
        }
        if r.access == Access::Management {
            // Required only when the app is configured with an API key or OIDC.
            op["security"] = json!([{ "bearer": [] }, {}]);
        }
        let Some(item) = paths
            .entry(r.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
        else {
            continue;
        };
        if r.path.contains("{code}") {
            item.insert(
                "parameters".into(),
                json!([{ "name": "code", "in": "path", "required": true,
                "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-]{3,32}$" } }]),
            );
        }
        item.insert(r.method.into(), op);
    }
    Value::Object(paths)
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": { "title": "ladder-app", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Link shortener with click analytics; Ladder's companion app." },
        "paths": paths(),
        "components": {
          "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer",
            "description": "An API key (phases 0-3) or an OIDC access token (phase 4)" } },
          "schemas": {
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
            "Ready": { "type": "object", "properties": { "status": { "type": "string", "enum": ["ready", "degraded", "unavailable"] },
                "phase": { "type": "integer" }, "store": { "type": "object" }, "cache": { "type": "string" }, "clicks": { "type": "string" } } },
            "Error": { "type": "object", "properties": { "error": { "type": "object", "properties": {
                "code": { "type": "string" }, "message": { "type": "string" } } } } }
        } }
    })
}

#[cfg(test)]
mod tests {
    use crate::routes::ROUTES;

    #[test]
    fn documents_every_route_and_every_schema_it_names() {
        let doc = super::document();
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method];
            assert!(
                op["summary"].is_string(),
                "{} {} undocumented",
                r.method,
                r.path
            );
        }
        let text = doc.to_string();
        for schema in text.split("#/components/schemas/").skip(1) {
            let name = schema.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "schema {name} is referenced but not defined"
            );
        }
        // The management API names its 401; redirects never do.
        assert!(doc["paths"]["/api/v1/links"]["post"]["responses"]["401"].is_object());
        assert!(doc["paths"]["/{code}"]["get"]["responses"]["401"].is_null());
    }
}
