//! JSON paths into tool arguments and results: `to`, `a.b`, `items[0]`, `recipients[*]`,
//! `items[*].url`, `['key.with.dots']`, `[*]` at the root. Parsed once when policies compile.

use std::ops::ControlFlow;

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
    /// Every element of an array (or every value of an object).
    Wildcard,
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    segments: Vec<Segment>,
    has_wildcard: bool,
}

/// A path that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path '{path}': {why}")]
pub struct PathError {
    /// The path as written.
    pub path: String,
    /// What is wrong.
    pub why: &'static str,
}

impl JsonPath {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let err = |why| PathError {
            path: text.to_owned(),
            why,
        };
        let mut segments = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        let mut expect_key = true;
        while i < b.len() {
            match b[i] {
                b'.' => {
                    if expect_key {
                        return Err(err("empty key"));
                    }
                    expect_key = true;
                    i += 1;
                }
                b'[' => {
                    let close = text[i..].find(']').ok_or_else(|| err("unclosed '['"))? + i;
                    let inner = &text[i + 1..close];
                    if inner == "*" {
                        segments.push(Segment::Wildcard);
                    } else if let Some(q) = inner
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                    {
                        segments.push(Segment::Key(q.to_owned()));
                    } else {
                        let n = inner
                            .parse::<usize>()
                            .map_err(|_| err("index must be a number, '*' or a quoted key"))?;
                        segments.push(Segment::Index(n));
                    }
                    i = close + 1;
                    expect_key = false;
                }
                _ => {
                    if !expect_key {
                        return Err(err("expected '.' or '[' between segments"));
                    }
                    let end = text[i..].find(['.', '[']).map_or(b.len(), |e| e + i);
                    let key = &text[i..end];
                    if key.contains(']') {
                        return Err(err("unexpected ']'"));
                    }
                    if key == "*" {
                        segments.push(Segment::Wildcard);
                    } else {
                        segments.push(Segment::Key(key.to_owned()));
                    }
                    i = end;
                    expect_key = false;
                }
            }
        }
        if segments.is_empty() {
            return Err(err("empty path"));
        }
        if expect_key && text.ends_with('.') {
            return Err(err("trailing '.'"));
        }
        let has_wildcard = segments.contains(&Segment::Wildcard);
        Ok(Self {
            segments,
            has_wildcard,
        })
    }

    /// True when the path has a `[*]`.
    pub fn has_wildcard(&self) -> bool {
        self.has_wildcard
    }

    /// The values the path reaches in `root` (none when it reaches nothing).
    pub fn collect<'v>(&self, root: &'v Value, out: &mut Vec<&'v Value>) {
        let _: ControlFlow<()> = self.visit(root, |v| {
            out.push(v);
            ControlFlow::Continue(())
        });
    }

    /// Calls `f` on each value the path reaches in `root`, in document order, until `f`
    /// breaks; what it broke with, if it did. Nothing is collected, so nothing allocated.
    pub fn visit<'v, B>(
        &self,
        root: &'v Value,
        mut f: impl FnMut(&'v Value) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        walk(root, &self.segments, &mut f)
    }
}

fn walk<'v, B>(
    v: &'v Value,
    rest: &[Segment],
    f: &mut impl FnMut(&'v Value) -> ControlFlow<B>,
) -> ControlFlow<B> {
    let Some((first, tail)) = rest.split_first() else {
        return f(v);
    };
    match first {
        Segment::Key(k) => match v.as_object().and_then(|o| o.get(k)) {
            Some(next) => walk(next, tail, f),
            None => ControlFlow::Continue(()),
        },
        Segment::Index(n) => match v.as_array().and_then(|a| a.get(*n)) {
            Some(next) => walk(next, tail, f),
            None => ControlFlow::Continue(()),
        },
        Segment::Wildcard => match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, tail, f)),
            Value::Object(map) => map.values().try_for_each(|i| walk(i, tail, f)),
            _ => ControlFlow::Continue(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get(path: &str, v: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        JsonPath::parse(path).expect("parses").collect(v, &mut out);
        out.into_iter().cloned().collect()
    }

    #[test]
    fn keys_indices_and_wildcards_at_any_depth() {
        let v = json!({"to": "a@x", "cc": ["b@x", "c@y"], "items": [{"url": "u1", "tags": ["t1"]}, {"url": "u2", "tags": ["t2", "t3"]}], "a.b": 1});
        assert_eq!(get("to", &v), vec![json!("a@x")]);
        assert_eq!(get("cc[*]", &v), vec![json!("b@x"), json!("c@y")]);
        assert_eq!(get("cc[1]", &v), vec![json!("c@y")]);
        assert_eq!(get("items[*].url", &v), vec![json!("u1"), json!("u2")]);
        assert_eq!(
            get("items[*].tags[*]", &v),
            vec![json!("t1"), json!("t2"), json!("t3")]
        );
        assert_eq!(get("['a.b']", &v), vec![json!(1)]);
        assert!(get("missing", &v).is_empty());
        assert!(get("to[*]", &v).is_empty());
        assert_eq!(get("[*]", &json!([1, 2])), vec![json!(1), json!(2)]);
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["", ".a", "a..b", "a[", "a[x]", "a.", "a]b"] {
            assert!(JsonPath::parse(p).is_err(), "{p}");
        }
    }
}
