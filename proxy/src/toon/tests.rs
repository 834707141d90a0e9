#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn toon(json: &str) -> String {
    encode(&Json::parse(json).expect("json"))
}

#[test]
fn numbers_take_the_canonical_decimal_form_without_rounding() {
    for (written, canonical) in [
        ("0", "0"),
        ("-0", "0"),
        ("-0.0e5", "0"),
        ("1.0", "1"),
        ("1.5000", "1.5"),
        ("1e6", "1000000"),
        ("1E-6", "0.000001"),
        ("0.000001", "0.000001"),
        ("1e-7", "1e-7"),
        ("-2.50e-9", "-2.5e-9"),
        ("123.456e1", "1234.56"),
        ("1e21", "1e+21"),
        ("999999999999999999999", "999999999999999999999"),
        ("12345678901234567890123", "1.2345678901234567890123e+22"),
        ("0.1234567890123456789", "0.1234567890123456789"),
        ("-42", "-42"),
        ("100", "100"),
    ] {
        assert_eq!(
            canonical_number(written).as_deref(),
            Some(canonical),
            "{written}"
        );
    }
    assert_eq!(canonical_number("1e99999999999999999999"), None);
}

#[test]
fn objects_nest_by_indentation_and_strings_are_quoted_only_when_they_must_be() {
    let out = toon(
        r##"{"id":123,"name":"Ada Lovelace","user":{"email":"ada@example.com","tags":[]},"empty":{},
            "s":["", " x", "true", "42", "05", "-x", "#x", "a,b", "a:b", "say \"hi\"", "a\nb", "ok", "é ok"],
            "my-key":null}"##,
    );
    assert_eq!(
        out,
        "id: 123\nname: Ada Lovelace\nuser:\n  email: ada@example.com\n  tags: []\nempty:\n\
         s[13]: \"\",\" x\",\"true\",\"42\",\"05\",\"-x\",\"#x\",\"a,b\",\"a:b\",\"say \\\"hi\\\"\",\"a\\nb\",ok,é ok\n\
         \"my-key\": null"
    );
}

#[test]
fn uniform_objects_become_a_table_and_their_nested_objects_field_groups() {
    assert_eq!(
        toon(r#"{"items":[{"sku":"A1","qty":2,"price":9.99},{"qty":1,"sku":"B2","price":14.5}]}"#),
        "items[2]{sku,qty,price}:\n  A1,2,9.99\n  B2,1,14.5"
    );
    assert_eq!(
        toon(r#"[{"id":1,"who":{"name":"a","age":3}},{"id":2,"who":{"age":4,"name":"b"}}]"#),
        "[2]{id,who{name,age}}:\n  1,a,3\n  2,b,4"
    );
    // A column mixing null and objects, an array value or an empty object: a list instead.
    assert_eq!(
        toon(r#"[{"a":1,"b":null},{"a":2,"b":{"c":1}}]"#),
        "[2]:\n  - a: 1\n    b: null\n  - a: 2\n    b:\n      c: 1"
    );
    assert_eq!(toon(r#"[{}, {"a":1}]"#), "[2]:\n  -\n  - a: 1");
}

#[test]
fn objects_of_uniform_objects_take_the_keyed_form() {
    assert_eq!(
        toon(r#"{"users":{"alice":{"age":30,"role":"admin"},"bob":{"role":"user","age":25}}}"#),
        "users[2:]{age,role}:\n  alice: 30,admin\n  bob: 25,user"
    );
    assert_eq!(
        toon(r#"{"a":{"x":1},"b-c":{"x":2}}"#),
        "[2:]{x}:\n  a: 1\n  \"b-c\": 2"
    );
    // One entry nests.
    assert_eq!(toon(r#"{"a":{"x":1}}"#), "a:\n  x: 1");
}

#[test]
fn list_items_carry_their_first_field_on_the_hyphen_line() {
    assert_eq!(
        toon(
            r#"{"xs":[1,"a",{"k":"v","n":{"m":1}},[1,2],[],[{"a":1}],{"rows":[{"a":1},{"a":2}],"z":true}]}"#
        ),
        "xs[7]:\n  - 1\n  - a\n  - k: v\n    n:\n      m: 1\n  - [2]: 1,2\n  - [0]:\n  - [1]:\n    - a: 1\n\
         \x20 - rows[2]{a}:\n      1\n      2\n    z: true"
    );
    assert_eq!(
        toon(r#"[{"n":{"m":1},"o":[1]}]"#),
        "[1]:\n  - n:\n      m: 1\n    o[1]: 1"
    );
}

#[test]
fn roots_and_the_json_that_cannot_be_converted() {
    assert_eq!(toon("[]"), "[]");
    assert_eq!(toon("{}"), "");
    assert_eq!(toon("[1,2,3]"), "[3]: 1,2,3");
    assert_eq!(toon(r#""hello""#), "hello");
    assert!(Json::parse(r#"{"a":1,"a":2}"#).is_none(), "duplicate keys");
    assert!(Json::parse("{").is_none());
}

fn rows(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(r#"{{"id":{i},"name":"user {i}","email":"u{i}@example.com","active":true}}"#)
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[test]
fn a_string_result_is_converted_only_when_it_saves_tokens() {
    let cache = Cache::new(1 << 20);
    let body = serde_json::to_string(&rows(20)).unwrap();
    let out = compress(
        Provider::Openai,
        body.as_bytes(),
        [(0, body.len())],
        1 << 20,
        &cache,
    );
    assert_eq!(out.converted, 1);
    assert!(out.tokens_after < out.tokens_before, "{out:?}");
    let replaced: String = serde_json::from_str(&out.replacements[0].1).unwrap();
    assert!(replaced.starts_with("[20]{id,name,email,active}:\n  0,user 0,u0@example.com,true"));
    // Plain text, and JSON whose TOON is no shorter, stay as they are.
    for text in [r#""no json here""#, r#""[]""#] {
        let out = compress(
            Provider::Openai,
            text.as_bytes(),
            [(0, text.len())],
            1 << 20,
            &cache,
        );
        assert_eq!(out, Outcome::default(), "{text}");
    }
    // Over the size cap: left alone.
    let out = compress(
        Provider::Openai,
        body.as_bytes(),
        [(0, body.len())],
        100,
        &cache,
    );
    assert_eq!(out.converted, 0);
}

#[test]
fn content_parts_convert_their_text_and_keep_everything_else() {
    let cache = Cache::new(1 << 20);
    let parts = serde_json::json!([
        {"type": "text", "text": rows(10), "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        {"type": "text", "text": "plain words"}
    ])
    .to_string();
    let out = compress(
        Provider::Anthropic,
        parts.as_bytes(),
        [(0, parts.len())],
        1 << 20,
        &cache,
    );
    assert_eq!(out.converted, 1);
    let v: serde_json::Value = serde_json::from_str(&out.replacements[0].1).unwrap();
    assert!(v[0]["text"].as_str().unwrap().starts_with("[10]{id,"));
    assert_eq!(v[0]["cache_control"]["type"], "ephemeral");
    assert_eq!(v[1]["source"]["data"], "AAAA");
    assert_eq!(v[2]["text"], "plain words");
}

#[test]
fn a_gemini_response_keeps_its_single_member_name() {
    let cache = Cache::new(1 << 20);
    let response = format!(r#"{{"result":{}}}"#, rows(10));
    let out = compress(
        Provider::Gemini,
        response.as_bytes(),
        [(0, response.len())],
        1 << 20,
        &cache,
    );
    let v: serde_json::Value = serde_json::from_str(&out.replacements[0].1).unwrap();
    assert!(v["result"].as_str().unwrap().starts_with("[10]{id,"), "{v}");
    let error = format!(r#"{{"error":{}}}"#, rows(10));
    let out = compress(
        Provider::Gemini,
        error.as_bytes(),
        [(0, error.len())],
        1 << 20,
        &cache,
    );
    assert_eq!(out.converted, 0, "an error is left for the model as sent");
}

#[test]
fn the_cache_answers_for_the_same_bytes_only_and_stays_within_its_budget() {
    let cache = Cache::new(64 * 1024);
    let a = serde_json::to_string(&rows(20)).unwrap();
    let first = compress(
        Provider::Openai,
        a.as_bytes(),
        [(0, a.len())],
        1 << 20,
        &cache,
    );
    let again = compress(
        Provider::Openai,
        a.as_bytes(),
        [(0, a.len())],
        1 << 20,
        &cache,
    );
    assert_eq!(first, again);
    for n in 0..200 {
        let b = serde_json::to_string(&rows(n % 30 + 1)).unwrap() + &" ".repeat(n);
        let _ = compress(
            Provider::Openai,
            b.as_bytes(),
            [(0, b.len())],
            1 << 20,
            &cache,
        );
    }
    let g = cache.inner.lock();
    let held: usize = g
        .young
        .values()
        .chain(g.old.values())
        .flatten()
        .map(|e| e.raw.len() + e.value.as_ref().map_or(0, |c| c.json.len()) + 64)
        .sum();
    assert!(held <= 64 * 1024, "{held}");
}

#[test]
fn the_cache_keeps_each_providers_shape_apart() {
    // The same bytes: an object is a Gemini response, never an OpenAI content.
    let cache = Cache::new(1 << 20);
    let object = format!(r#"{{"result":{}}}"#, rows(10));
    let gemini = compress(
        Provider::Gemini,
        object.as_bytes(),
        [(0, object.len())],
        1 << 20,
        &cache,
    );
    assert_eq!(gemini.converted, 1);
    let openai = compress(
        Provider::Openai,
        object.as_bytes(),
        [(0, object.len())],
        1 << 20,
        &cache,
    );
    assert_eq!(openai.converted, 0);
}
