//! A JSON string read from a body: borrowed from it, or owned when it had escapes.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::de::{Deserialize, Deserializer, Visitor};

/// A JSON string borrowed from the body it was read from, copied only when unescaping
/// changed it. Not serde's `Cow<str>`: its `Deserialize` always copies, and
/// `#[serde(borrow)]` borrows only a bare `Cow` field, not one inside an `Option` (every
/// optional string of a request or response cost an allocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JStr<'a>(Cow<'a, str>);

impl JStr<'_> {
    /// The string, owned.
    pub(crate) fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl Deref for JStr<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for JStr<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;

        impl<'de> Visitor<'de> for Str {
            type Value = JStr<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JStr(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JStr(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(JStr(Cow::Owned(v)))
            }
        }

        d.deserialize_str(Str)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::borrow::Cow;

    use super::JStr;

    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow, default)]
        role: Option<JStr<'a>>,
    }

    #[test]
    fn optional_strings_borrow_unless_unescaped() {
        let m: Msg<'_> = serde_json::from_str(r#"{"role":"user"}"#).unwrap();
        assert!(matches!(
            m.role.as_ref().map(|r| &r.0),
            Some(Cow::Borrowed("user"))
        ));
        let m: Msg<'_> = serde_json::from_str(r#"{"role":"us\u0065r"}"#).unwrap();
        let role = m.role.unwrap();
        assert!(matches!(role.0, Cow::Owned(_)));
        assert_eq!(role, "user");
        assert!(serde_json::from_str::<Msg<'_>>(r#"{"role":1}"#).is_err());
        assert!(
            serde_json::from_str::<Msg<'_>>("{}")
                .unwrap()
                .role
                .is_none()
        );
    }
}
