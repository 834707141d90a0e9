//! JSON-RPC 2.0 as MCP uses it: one message per value, kinds told apart by their fields.

use serde_json::{Map, Value, json};

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// Unknown method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Bad parameters (also: unknown tool, prompt or resource).
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error (an upstream failed).
pub const INTERNAL_ERROR: i64 = -32603;
/// 2026-07-28: an `Mcp-*` header is missing or disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: the protocol version is not supported.
pub const UNSUPPORTED_VERSION: i64 = -32022;
/// MCP: resource not found (SEP-2164).
pub const RESOURCE_NOT_FOUND: i64 = -32002;

/// One incoming message.
#[derive(Debug, Clone)]
pub enum Message {
    /// A request: it has an id and a method.
    Request {
        /// Its id (string or number), echoed in the response.
        id: Value,
        /// The method.
        method: String,
        /// Its params (an object), if any.
        params: Option<Value>,
    },
    /// A notification: a method without an id.
    Notification {
        /// The method.
        method: String,
        /// Its params, if any.
        params: Option<Value>,
    },
    /// A response to a request the other side received (result or error).
    Response {
        /// The id it answers.
        id: Value,
        /// The whole message.
        body: Value,
    },
}

impl Message {
    /// Reads one JSON-RPC message; the error is a JSON-RPC error response to send back.
    pub fn parse(v: Value) -> Result<Self, Value> {
        let Value::Object(mut m) = v else {
            return Err(error(
                Value::Null,
                INVALID_REQUEST,
                "a JSON-RPC message must be an object",
            ));
        };
        if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            let id = m.remove("id").unwrap_or(Value::Null);
            return Err(error(id, INVALID_REQUEST, "jsonrpc must be \"2.0\""));
        }
        let id = m.get("id").cloned();
        if let Some(id) = &id
            && !(id.is_string() || id.is_i64() || id.is_u64())
        {
            return Err(error(
                Value::Null,
                INVALID_REQUEST,
                "id must be a string or an integer",
            ));
        }
        match (m.remove("method"), id) {
            (Some(Value::String(method)), Some(id)) => Ok(Message::Request {
                id,
                method,
                params: m.remove("params"),
            }),
            (Some(Value::String(method)), None) => Ok(Message::Notification {
                method,
                params: m.remove("params"),
            }),
            (Some(_), id) => Err(error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "method must be a string",
            )),
            (None, Some(id)) if m.contains_key("result") || m.contains_key("error") => {
                Ok(Message::Response {
                    id,
                    body: Value::Object(m),
                })
            }
            (None, id) => Err(error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "a message needs a method, or a result or error",
            )),
        }
    }
}

/// A value as JSON text. `Value`'s `Display` writes through `fmt::Write` one piece at a time;
/// serialising into a buffer costs about half the instructions (measured per `tools/call`).
pub fn to_text(value: &Value) -> String {
    // A `Value` always serialises: its keys are strings and its numbers finite.
    serde_json::to_string(value).unwrap_or_default()
}

/// A value as JSON bytes, ready to send.
pub fn to_bytes(value: &Value) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// The value under `keys`, one object key per step. `Value::pointer` does the same from a
/// JSON Pointer but unescapes each step into two new strings: a few thousand instructions
/// on every request of the gateway's hot path.
pub fn at<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(value, |v, k| v.get(*k))
}

/// A success response.
pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// An error response with data.
pub fn error_with(id: Value, code: i64, message: &str, data: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message, "data": data}})
}

/// A request.
pub fn request(id: Value, method: &str, params: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), "2.0".into());
    m.insert("id".into(), id);
    m.insert("method".into(), method.into());
    if let Some(p) = params {
        m.insert("params".into(), p);
    }
    Value::Object(m)
}

/// A notification.
pub fn notification(method: &str, params: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), "2.0".into());
    m.insert("method".into(), method.into());
    if let Some(p) = params {
        m.insert("params".into(), p);
    }
    Value::Object(m)
}

/// The `_meta` object of a message's params, if any.
pub fn meta(params: Option<&Value>) -> Option<&Map<String, Value>> {
    params?.get("_meta")?.as_object()
}

/// A string param.
pub fn param_str<'a>(params: Option<&'a Value>, key: &str) -> Option<&'a str> {
    params?.get(key)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_told_apart_by_their_fields() {
        let m = Message::parse(json!({"jsonrpc":"2.0","id":1,"method":"ping"})).expect("request");
        assert!(matches!(m, Message::Request { .. }));
        let m = Message::parse(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .expect("notification");
        assert!(matches!(m, Message::Notification { .. }));
        let m = Message::parse(json!({"jsonrpc":"2.0","id":"a","result":{}})).expect("response");
        assert!(matches!(m, Message::Response { .. }));
        let e = Message::parse(json!({"jsonrpc":"1.0","id":3,"method":"x"})).expect_err("old");
        assert_eq!(e["error"]["code"], INVALID_REQUEST);
        assert_eq!(e["id"], 3);
        let e = Message::parse(json!({"jsonrpc":"2.0","id":1.5,"method":"x"})).expect_err("id");
        assert_eq!(e["error"]["code"], INVALID_REQUEST);
        assert!(Message::parse(json!([1])).is_err());
    }
}
