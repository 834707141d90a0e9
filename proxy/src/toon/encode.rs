//! A TOON encoder (Token-Oriented Object Notation, specification 4.4): comma delimiter,
//! two-space indentation, key order as written, tabular forms for uniform arrays and
//! keyed tabular forms for objects of uniform objects.
//!
//! Values are read from JSON text in their own order, and numbers are kept as the digits
//! written (re-written in TOON's canonical decimal form without going through `f64`), so a
//! 30-digit id reaches the model as it left the tool.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON value in the order it was written; numbers in canonical TOON form.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, already canonical.
    Number(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object's members in the order written.
    Object(Vec<(String, Json)>),
}

/// An object's members in order, borrowed from the text where possible.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Json {
    /// Reads JSON text; `None` when it is not JSON (or nests deeper than serde_json allows).
    pub fn parse(text: &str) -> Option<Json> {
        let raw: &RawValue = serde_json::from_str(text).ok()?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: &RawValue) -> Option<Json> {
        let text = raw.get();
        Some(match text.as_bytes().first()? {
            b'{' => {
                let Members(members) = serde_json::from_str(text).ok()?;
                // Duplicate keys have no one meaning (JSON readers keep the last): not ours to pick.
                let mut seen = std::collections::HashSet::with_capacity(members.len());
                if !members.iter().all(|(k, _)| seen.insert(k.as_ref())) {
                    return None;
                }
                let mut out = Vec::with_capacity(members.len());
                for (k, v) in members {
                    out.push((k.into_owned(), Self::from_raw(v)?));
                }
                Json::Object(out)
            }
            b'[' => {
                let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
                Json::Array(
                    items
                        .into_iter()
                        .map(Self::from_raw)
                        .collect::<Option<_>>()?,
                )
            }
            b'"' => Json::String(serde_json::from_str(text).ok()?),
            b't' => Json::Bool(true),
            b'f' => Json::Bool(false),
            b'n' => Json::Null,
            _ => Json::Number(canonical_number(text)?),
        })
    }

    fn is_primitive(&self) -> bool {
        !matches!(self, Json::Array(_) | Json::Object(_))
    }
}

/// A JSON number's text in TOON's canonical form: plain decimal for 1e-6 ≤ |n| < 1e21 (no
/// exponent, no leading or trailing zeros, -0 as 0), exponent form with an explicit sign
/// outside that range. Exact: the digits are moved, never rounded.
pub fn canonical_number(text: &str) -> Option<String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // value = digits × 10^scale
    let all: String = int.chars().chain(frac.chars()).collect();
    let digits = all.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some("0".into());
    }
    let frac_len = i64::try_from(frac.len()).ok()?;
    let dropped = i64::try_from(digits.len() - trimmed.len()).ok()?;
    let scale = exponent.checked_sub(frac_len)?.checked_add(dropped)?;
    let n = i64::try_from(trimmed.len()).ok()?;
    // The power of ten of the leading digit.
    let magnitude = n.checked_add(scale)?.checked_sub(1)?;
    let mut out = String::with_capacity(trimmed.len() + 8);
    if negative {
        out.push('-');
    }
    if (-6..=20).contains(&magnitude) {
        if scale >= 0 {
            out.push_str(trimmed);
            out.extend(std::iter::repeat_n('0', usize::try_from(scale).ok()?));
        } else {
            let point = n + scale;
            if point > 0 {
                let p = usize::try_from(point).ok()?;
                out.push_str(&trimmed[..p]);
                out.push('.');
                out.push_str(&trimmed[p..]);
            } else {
                out.push_str("0.");
                out.extend(std::iter::repeat_n('0', usize::try_from(-point).ok()?));
                out.push_str(trimmed);
            }
        }
    } else {
        out.push_str(&trimmed[..1]);
        if trimmed.len() > 1 {
            out.push('.');
            out.push_str(&trimmed[1..]);
        }
        let _ = write!(out, "e{}{magnitude}", if magnitude < 0 { "" } else { "+" });
    }
    Some(out)
}

/// Whether a string looks like a number to a TOON reader (and so must be quoted).
fn numeric_like(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.starts_with([' ', '\t'])
        || s.ends_with([' ', '\t'])
        || matches!(s, "true" | "false" | "null")
        || s.starts_with(['-', '#'])
        || numeric_like(s)
        || s.chars().any(|c| {
            matches!(c, ':' | '"' | '\\' | '[' | ']' | '{' | '}' | ',') || (c as u32) < 0x20
        })
}

fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_key(out: &mut String, k: &str) {
    let mut bytes = k.bytes();
    let plain = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if plain {
        out.push_str(k);
    } else {
        push_quoted(out, k);
    }
}

fn push_primitive(out: &mut String, v: &Json) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(n),
        Json::String(s) if needs_quotes(s) => push_quoted(out, s),
        Json::String(s) => out.push_str(s),
        // Not reached: callers pass primitives only.
        Json::Array(_) | Json::Object(_) => out.push_str("null"),
    }
}

/// A tabular column: a primitive leaf, or a group of uniform objects' columns.
enum Column<'a> {
    Leaf,
    Group(Vec<(&'a str, Column<'a>)>),
}

/// An object's members, as a slice.
type Fields<'a> = &'a [(String, Json)];

/// The members of each value, when every value is an object.
fn all_objects<'a>(values: impl Iterator<Item = &'a Json>) -> Option<Vec<Fields<'a>>> {
    values
        .map(|v| match v {
            Json::Object(m) => Some(m.as_slice()),
            _ => None,
        })
        .collect()
}

/// The shared columns of non-empty objects with one key set (order may vary), each column
/// all primitives or itself such a group; `None` when they do not share one.
fn group_of<'a>(objects: &[Fields<'a>]) -> Option<Vec<(&'a str, Column<'a>)>> {
    let first = *objects.first()?;
    if first.is_empty() {
        return None;
    }
    let mut columns = Vec::with_capacity(first.len());
    for (key, _) in first {
        let mut values = Vec::with_capacity(objects.len());
        for o in objects {
            if o.len() != first.len() {
                return None;
            }
            values.push(&o.iter().find(|(k, _)| k == key)?.1);
        }
        let column = if values.iter().all(|v| v.is_primitive()) {
            Column::Leaf
        } else {
            Column::Group(group_of(&all_objects(values.iter().copied())?)?)
        };
        columns.push((key.as_str(), column));
    }
    Some(columns)
}

fn push_fields(out: &mut String, columns: &[(&str, Column<'_>)]) {
    out.push('{');
    for (i, (k, c)) in columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_key(out, k);
        if let Column::Group(sub) = c {
            push_fields(out, sub);
        }
    }
    out.push('}');
}

fn push_cells(
    out: &mut String,
    columns: &[(&str, Column<'_>)],
    members: Fields<'_>,
    first: &mut bool,
) {
    for (k, c) in columns {
        let value = members.iter().find(|(m, _)| m == k).map(|(_, v)| v);
        match (c, value) {
            (Column::Group(sub), Some(Json::Object(m))) => push_cells(out, sub, m, first),
            (_, v) => {
                if !*first {
                    out.push(',');
                }
                *first = false;
                push_primitive(out, v.unwrap_or(&Json::Null));
            }
        }
    }
}

struct Writer {
    out: String,
}

impl Writer {
    fn line(&mut self, depth: usize) -> &mut String {
        if !self.out.is_empty() {
            self.out.push('\n');
        }
        self.out.extend(std::iter::repeat_n(' ', depth * 2));
        &mut self.out
    }

    /// One field: `key…` on a line at `depth` after `prefix` (`"- "` for a list item's
    /// first field), its content at `inner`.
    fn field(&mut self, depth: usize, prefix: &str, key: &str, value: &Json, inner: usize) {
        let out = self.line(depth);
        out.push_str(prefix);
        push_key(out, key);
        match value {
            Json::Object(m) if m.is_empty() => out.push(':'),
            Json::Object(m) => {
                if let Some(columns) = keyed(m) {
                    self.keyed_rows(m, &columns, inner);
                } else {
                    out.push(':');
                    self.members(m, inner);
                }
            }
            Json::Array(items) => self.array_after_key(items, inner, false),
            v => {
                out.push_str(": ");
                push_primitive(out, v);
            }
        }
    }

    fn members(&mut self, m: &[(String, Json)], depth: usize) {
        for (k, v) in m {
            self.field(depth, "", k, v, depth + 1);
        }
    }

    /// Continues a line that holds a key (or nothing, at the root) with an array's header
    /// and content; rows and items go at `inner`.
    fn array_after_key(&mut self, items: &[Json], inner: usize, root: bool) {
        let out = &mut self.out;
        if items.is_empty() {
            out.push_str(if root { "[]" } else { ": []" });
            return;
        }
        let _ = write!(out, "[{}]", items.len());
        if items.iter().all(Json::is_primitive) {
            out.push_str(": ");
            self.inline(items);
            return;
        }
        let objects = all_objects(items.iter());
        if let Some(columns) = objects.as_deref().and_then(group_of) {
            push_fields(out, &columns);
            out.push(':');
            for m in objects.unwrap_or_default() {
                let row = self.line(inner);
                push_cells(row, &columns, m, &mut true);
            }
            return;
        }
        out.push(':');
        for item in items {
            self.item(item, inner);
        }
    }

    fn inline(&mut self, items: &[Json]) {
        for (i, v) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            push_primitive(&mut self.out, v);
        }
    }

    /// A list item at `depth`.
    fn item(&mut self, value: &Json, depth: usize) {
        match value {
            Json::Object(m) => match m.split_first() {
                None => self.line(depth).push('-'),
                Some(((k, v), rest)) => {
                    self.field(depth, "- ", k, v, depth + 2);
                    self.members(rest, depth + 1);
                }
            },
            Json::Array(items) => {
                let out = self.line(depth);
                let _ = write!(out, "- [{}]:", items.len());
                if items.iter().all(Json::is_primitive) {
                    if !items.is_empty() {
                        out.push(' ');
                        self.inline(items);
                    }
                } else {
                    // Tabular form has no keyless header here: always the expanded list.
                    for i in items {
                        self.item(i, depth + 1);
                    }
                }
            }
            v => {
                let out = self.line(depth);
                out.push_str("- ");
                push_primitive(out, v);
            }
        }
    }

    /// `[N:]{fields}:` after the key, then one entry row per member at `depth`.
    fn keyed_rows(&mut self, m: &[(String, Json)], columns: &[(&str, Column<'_>)], depth: usize) {
        let _ = write!(self.out, "[{}:]", m.len());
        push_fields(&mut self.out, columns);
        self.out.push(':');
        for (k, v) in m {
            let row = self.line(depth);
            push_key(row, k);
            row.push_str(": ");
            if let Json::Object(members) = v {
                push_cells(row, columns, members, &mut true);
            }
        }
    }
}

/// The keyed tabular columns of an object whose (two or more) values are uniform objects.
fn keyed<'a>(m: &'a [(String, Json)]) -> Option<Vec<(&'a str, Column<'a>)>> {
    if m.len() < 2 {
        return None;
    }
    group_of(&all_objects(m.iter().map(|(_, v)| v))?)
}

/// The TOON document of a value.
pub fn encode(value: &Json) -> String {
    let mut w = Writer { out: String::new() };
    match value {
        Json::Object(m) => match keyed(m) {
            Some(columns) => w.keyed_rows(m, &columns, 1),
            None => w.members(m, 0),
        },
        Json::Array(items) => w.array_after_key(items, 1, true),
        v => push_primitive(&mut w.out, v),
    }
    w.out
}
