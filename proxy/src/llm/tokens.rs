//! Token counts read the way a client's reader takes them. A provider, or a server that
//! speaks its API, may write a count as `null`, `12.0` or `"12"`; a count that failed the
//! body's read would leave its tool calls unread (and the body refused, since calls that
//! cannot be judged do not go out), for a number that only feeds the usage record.

use std::fmt;

use serde::de::{Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A count: a non-negative integer as is; a finite non-negative float truncated; digits
/// in a string parsed; anything else (`null`, a negative number, another type) as absent.
pub(crate) fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(optional_count(d)?.unwrap_or(0))
}

/// [`count`], keeping "absent" apart from zero.
pub(crate) fn optional_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(Count)
}

struct Count;

impl<'de> Visitor<'de> for Count {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a token count")
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).ok())
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
        // Truncation is the point; the range check keeps the cast exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok((0.0..18_446_744_073_709_551_616.0)
            .contains(&v)
            .then_some(v as u64))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.trim().parse().ok())
    }

    fn visit_bool<E: Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[derive(serde::Deserialize)]
    struct Usage {
        #[serde(default, deserialize_with = "super::count")]
        n: u64,
        #[serde(default, deserialize_with = "super::optional_count")]
        m: Option<u64>,
    }

    fn read(json: &str) -> (u64, Option<u64>) {
        let u: Usage = serde_json::from_str(json).unwrap();
        (u.n, u.m)
    }

    #[test]
    fn counts_are_read_as_clients_read_them_and_odd_ones_are_absent() {
        assert_eq!(read(r#"{"n":12,"m":3}"#), (12, Some(3)));
        assert_eq!(read("{}"), (0, None));
        assert_eq!(read(r#"{"n":12.0,"m":"7"}"#), (12, Some(7)));
        assert_eq!(read(r#"{"n":null,"m":null}"#), (0, None));
        assert_eq!(read(r#"{"n":-1,"m":-5}"#), (0, None));
        assert_eq!(read(r#"{"n":1e300,"m":true}"#), (0, None));
        assert_eq!(read(r#"{"n":{"a":[1]},"m":[1,2]}"#), (0, None));
        assert_eq!(read(r#"{"n":18446744073709551615}"#), (u64::MAX, None));
    }
}
