//! One table drives routing, permissions and the OpenAPI document: a route is added with
//! its permission (the type requires one), its schemas and its handler, so the document
//! cannot drift from the code and no route can skip authorisation.

use std::collections::BTreeMap;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, on};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use crate::auth::{Perm, require};
use crate::error::ErrorBody;
use crate::state::AppState;

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

fn root_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.root_schema_for::<T>()
}

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
}

impl Method {
    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        }
    }

    /// Lower-case name, as OpenAPI writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Delete => "delete",
        }
    }
}

/// One operation's description.
#[derive(Debug, Clone)]
pub struct Op {
    method: Method,
    path: &'static str,
    perm: Perm,
    tag: &'static str,
    summary: &'static str,
    body: Option<SchemaFn>,
    query: Option<SchemaFn>,
    ok_status: u16,
    ok: Option<SchemaFn>,
    or_no_content: bool,
}

impl Op {
    /// An operation on `path` (relative to `/api/v1`) needing `perm`.
    pub fn new(
        method: Method,
        path: &'static str,
        perm: Perm,
        tag: &'static str,
        summary: &'static str,
    ) -> Self {
        Self {
            method,
            path,
            perm,
            tag,
            summary,
            body: None,
            query: None,
            ok_status: 200,
            ok: None,
            or_no_content: false,
        }
    }

    /// The JSON request body's type.
    pub fn body<T: JsonSchema>(mut self) -> Self {
        self.body = Some(schema_of::<T>);
        self
    }

    /// The query parameters' type (a flat struct).
    pub fn query<T: JsonSchema>(mut self) -> Self {
        self.query = Some(root_of::<T>);
        self
    }

    /// The success status and body type.
    pub fn ok<T: JsonSchema>(mut self, status: u16) -> Self {
        self.ok_status = status;
        self.ok = Some(schema_of::<T>);
        self
    }

    /// May also answer 204 without a body (long polls).
    pub fn or_no_content(mut self) -> Self {
        self.or_no_content = true;
        self
    }

    /// Success without a body.
    pub fn no_content(mut self) -> Self {
        self.ok_status = 204;
        self.ok = None;
        self
    }
}

/// A route as registered: what tests enumerate.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// Method.
    pub method: Method,
    /// Path under `/api/v1`, with `{param}`s.
    pub path: &'static str,
    /// The permission it needs.
    pub perm: Perm,
}

/// Collects routes and their documentation.
pub struct ApiBuilder {
    state: AppState,
    router: Router<AppState>,
    paths: BTreeMap<String, Map<String, Value>>,
    generator: SchemaGenerator,
    routes: Vec<RouteInfo>,
}

impl ApiBuilder {
    /// Empty.
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            router: Router::new(),
            paths: BTreeMap::new(),
            generator: SchemaSettings::openapi3().into_generator(),
            routes: Vec::new(),
        }
    }

    /// Adds one operation: routed, guarded by its permission, documented.
    pub fn add<H, T>(mut self, op: Op, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let guarded = on(op.method.filter(), handler).route_layer(
            axum::middleware::from_fn_with_state((self.state.clone(), op.perm), require),
        );
        self.router = self.router.route(op.path, guarded);
        let doc = self.document(&op);
        self.paths
            .entry(format!("/api/v1{}", op.path))
            .or_default()
            .insert(op.method.as_str().into(), doc);
        self.routes.push(RouteInfo {
            method: op.method,
            path: op.path,
            perm: op.perm,
        });
        self
    }

    fn document(&mut self, op: &Op) -> Value {
        let mut params = Vec::new();
        for seg in op.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({"name": name, "in": "path", "required": true,
                                   "schema": {"type": "string", "minLength": 1}}));
            }
        }
        if let Some(q) = op.query {
            let root = serde_json::to_value(q(&mut self.generator)).unwrap_or(Value::Null);
            let required: Vec<String> = root
                .get("required")
                .and_then(|r| serde_json::from_value(r.clone()).ok())
                .unwrap_or_default();
            if let Some(props) = root.get("properties").and_then(Value::as_object) {
                for (name, schema) in props {
                    let mut schema = schema.clone();
                    let description = schema
                        .as_object_mut()
                        .and_then(|o| o.remove("description"))
                        .unwrap_or(Value::Null);
                    params.push(json!({"name": name, "in": "query",
                        "required": required.contains(name), "schema": schema,
                        "description": description}));
                }
            }
        }
        let error_schema = serde_json::to_value(self.generator.subschema_for::<ErrorBody>())
            .unwrap_or(Value::Null);
        let error = json!({"description": "error", "content": {"application/json": {"schema": error_schema}}});
        let mut responses = Map::new();
        let ok = match op.ok {
            Some(f) => {
                let s = serde_json::to_value(f(&mut self.generator)).unwrap_or(Value::Null);
                json!({"description": "success", "content": {"application/json": {"schema": s}}})
            }
            None => json!({"description": "success, no content"}),
        };
        responses.insert(op.ok_status.to_string(), ok);
        if op.or_no_content {
            responses.insert(
                "204".into(),
                json!({"description": "nothing new within the timeout"}),
            );
        }
        for code in ["400", "401", "403", "404", "409", "422"] {
            responses.insert(code.into(), error.clone());
        }
        let op_id = format!(
            "{}{}",
            op.method.as_str(),
            op.path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let s = s.trim_matches(|c| c == '{' || c == '}').replace('-', "_");
                    let mut c = s.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect::<String>()
        );
        let mut doc = json!({
            "operationId": op_id,
            "summary": op.summary,
            "tags": [op.tag],
            "x-permission": op.perm.to_string(),
            "parameters": params,
            "responses": responses,
        });
        if let Some(b) = op.body {
            let s = serde_json::to_value(b(&mut self.generator)).unwrap_or(Value::Null);
            doc["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": s}}});
        }
        doc
    }

    /// The router (to nest under `/api/v1`), the OpenAPI document and the route table.
    pub fn finish(mut self) -> (Router<AppState>, Value, Vec<RouteInfo>) {
        let schemas = self.generator.take_definitions(true);
        let doc = json!({
            "openapi": "3.0.3",
            "info": {
                "title": "Sluice control plane",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "The admin API: organisations, teams, members, roles, keys, profiles, \
                    credentials, virtual keys, tools, policies, approvals, prices, limits, \
                    optimisation rules, MCP servers, logs, snapshots and usage. Every operation \
                    names the permission it needs in `x-permission`.",
            },
            "paths": self.paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
            },
            "security": [{"adminKey": []}],
        });
        (self.router, doc, self.routes)
    }
}
