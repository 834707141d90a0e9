//! Policies indexed by the tool they bind to, so a call or a result reads only its own.
//!
//! A selector is exact (`profile:support`, `send_email`), a source glob with an exact name
//! (`profile:*`, `send_email`: the usual form), or has a glob in its name (`delete_*`).
//! Exact selectors sit in a map; source globs sit in a map by name, each source matched by
//! a plain `*` glob (a `RegexSet` over every policy cost a scan of all of them per lookup);
//! name globs go into one `RegexSet`.
//!
//! A glob's `*` is the regex `.*`, which does not cross a newline; a tool whose source or
//! name holds a newline or a NUL (the key's separator) is looked up through one `RegexSet`
//! of every glob selector, exactly as before, so such names bind to the same policies.

use std::collections::HashMap;
use std::sync::Arc;

use regex::RegexSet;

use crate::ToolId;
use crate::model::ToolSelector;

/// A `*`-only glob as literal pieces: the text starts with the first, ends with the last,
/// and holds the others in order between them.
#[derive(Debug, Clone)]
struct Glob {
    pieces: Vec<Box<str>>,
}

impl Glob {
    fn new(pattern: &str) -> Self {
        Self {
            pieces: pattern.split('*').map(Box::from).collect(),
        }
    }

    /// Whether `text` matches, `*` standing for any run of characters. Taking each middle
    /// piece at its first occurrence is exact for `*`-only globs: an earlier occurrence
    /// leaves at least as much text for the pieces after it.
    fn matches(&self, text: &str) -> bool {
        let Some((first, rest)) = self.pieces.split_first() else {
            return text.is_empty();
        };
        let Some((last, middle)) = rest.split_last() else {
            return text == &**first;
        };
        if text.len() < first.len() + last.len()
            || !text.starts_with(&**first)
            || !text.ends_with(&**last)
        {
            return false;
        }
        let mut between = &text[first.len()..text.len() - last.len()];
        for piece in middle {
            match between.find(&**piece) {
                Some(at) => between = &between[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

/// A map filled from the snapshot's own selectors that a call only looks up in: no call
/// inserts into it, so it needs no defence against keys chosen to collide, and takes a
/// faster hash than the standard SipHash (two lookups per policy lookup, several per call).
type SelectorMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Policies indexed by tool; see the module's text.
#[derive(Debug, Clone, Default)]
pub struct ToolIndex {
    exact: SelectorMap<ToolId, Vec<u32>>,
    by_name: SelectorMap<Arc<str>, Vec<(Glob, u32)>>,
    name_globs: Option<RegexSet>,
    name_glob_policy: Vec<u32>,
    every_glob: Option<RegexSet>,
    every_glob_policy: Vec<u32>,
}

fn regex_glob(s: &str) -> String {
    s.split('*')
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join(".*")
}

fn key_pattern(s: &ToolSelector) -> String {
    format!("^{}\u{0}{}$", regex_glob(&s.source), regex_glob(&s.name))
}

fn regex_set(patterns: &[String]) -> Option<RegexSet> {
    // Globs are escaped literals and `.*`: the set always builds.
    (!patterns.is_empty())
        .then(|| RegexSet::new(patterns).ok())
        .flatten()
}

impl ToolIndex {
    /// Indexes `selectors`; a policy's index is its position.
    pub(crate) fn build(selectors: &[&ToolSelector]) -> Self {
        let mut index = Self::default();
        let (mut name_globs, mut every_glob) = (Vec::new(), Vec::new());
        for (i, s) in selectors.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let source_glob = s.source.contains('*');
            let name_glob = s.name.contains('*');
            if source_glob || name_glob {
                every_glob.push(key_pattern(s));
                index.every_glob_policy.push(i);
            }
            if name_glob {
                name_globs.push(key_pattern(s));
                index.name_glob_policy.push(i);
            } else if source_glob {
                index
                    .by_name
                    .entry(Arc::from(s.name.as_str()))
                    .or_default()
                    .push((Glob::new(&s.source), i));
            } else {
                index
                    .exact
                    .entry(ToolId::new(s.source.as_str(), s.name.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        index.name_globs = regex_set(&name_globs);
        index.every_glob = regex_set(&every_glob);
        index
    }

    /// Indices of the policies that bind to `tool`, in declaration order.
    pub fn lookup(&self, tool: &ToolId, out: &mut Vec<u32>) {
        out.clear();
        if let Some(v) = self.exact.get(tool) {
            out.extend_from_slice(v);
        }
        let odd = |s: &str| s.contains(['\n', '\u{0}']);
        if odd(&tool.source) || odd(&tool.name) {
            if let Some(set) = &self.every_glob {
                with_key(tool, |key| {
                    out.extend(set.matches(key).iter().map(|m| self.every_glob_policy[m]));
                });
            }
        } else {
            if let Some(globs) = self.by_name.get(&tool.name) {
                out.extend(
                    globs
                        .iter()
                        .filter(|(g, _)| g.matches(&tool.source))
                        .map(|(_, i)| *i),
                );
            }
            if let Some(set) = &self.name_globs {
                with_key(tool, |key| {
                    out.extend(set.matches(key).iter().map(|m| self.name_glob_policy[m]));
                });
            }
        }
        if !out.is_sorted() {
            out.sort_unstable();
        }
    }
}

/// Runs `f` on `source NUL name`, the text the glob sets match: built on the stack when it
/// fits (a lookup per judged call; `format!` cost more than the match), else on the heap.
fn with_key<R>(tool: &ToolId, f: impl FnOnce(&str) -> R) -> R {
    let (source, name) = (tool.source.as_bytes(), tool.name.as_bytes());
    let mut stack = [0u8; 256];
    if let Some(buf) = stack.get_mut(..source.len() + 1 + name.len()) {
        let (head, tail) = buf.split_at_mut(source.len());
        head.copy_from_slice(source);
        if let Some((nul, rest)) = tail.split_first_mut() {
            *nul = 0;
            rest.copy_from_slice(name);
        }
        // Two strings joined by NUL are text; checked all the same, rather than assumed.
        if let Ok(key) = std::str::from_utf8(buf) {
            return f(key);
        }
    }
    f(&format!("{}\u{0}{}", tool.source, tool.name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;

    /// What the index answered before it had a map by name: one regex per selector over
    /// `source NUL name`.
    fn by_regex(selectors: &[ToolSelector], tool: &ToolId) -> Vec<u32> {
        let key = format!("{}\u{0}{}", tool.source, tool.name);
        selectors
            .iter()
            .enumerate()
            .filter(|(_, s)| regex::Regex::new(&key_pattern(s)).unwrap().is_match(&key))
            .map(|(i, _)| u32::try_from(i).unwrap())
            .collect()
    }

    fn lookup(selectors: &[ToolSelector], tool: &ToolId) -> Vec<u32> {
        let refs: Vec<&ToolSelector> = selectors.iter().collect();
        let mut out = Vec::new();
        ToolIndex::build(&refs).lookup(tool, &mut out);
        out
    }

    fn sel(source: &str, name: &str) -> ToolSelector {
        ToolSelector {
            source: source.into(),
            name: name.into(),
        }
    }

    #[test]
    fn globs_bind_as_written() {
        let s = [
            sel("profile:*", "send_email"),
            sel("mcp:*", "delete_*"),
            sel("profile:support", "send_email"),
            sel("*", "*"),
            sel("mcp:*-prod", "send_email"),
        ];
        assert_eq!(
            lookup(&s, &ToolId::new("profile:support", "send_email")),
            [0, 2, 3]
        );
        assert_eq!(lookup(&s, &ToolId::new("mcp:db", "delete_row")), [1, 3]);
        assert_eq!(
            lookup(&s, &ToolId::new("mcp:mail-prod", "send_email")),
            [3, 4]
        );
        assert_eq!(lookup(&s, &ToolId::new("mcp:mail-dev", "send_email")), [3]);
        // As the regex `.*` always did: `*` does not cross a newline, and a source glob
        // reaches across a NUL in the name.
        assert!(lookup(&s, &ToolId::new("profile:a\nb", "send_email")).is_empty());
        assert_eq!(
            lookup(&s, &ToolId::new("profile:a", "x\u{0}send_email")),
            [0, 3]
        );
    }

    /// The glob sets match `source NUL name` built on the stack up to 256 bytes, on the heap
    /// beyond: both sides of the edge bind the same policies.
    #[test]
    fn long_names_bind_as_short_ones_do() {
        let s = [sel("mcp:*", "send_*"), sel("*", "*"), sel("mcp:files", "*")];
        for len in [1, 240, 241, 242, 300, 5000] {
            let name = format!("send_{}", "x".repeat(len));
            let tool = ToolId::new("mcp:files", name.as_str());
            assert_eq!(lookup(&s, &tool), [0, 1, 2], "name of {} bytes", name.len());
            assert_eq!(lookup(&s, &tool), by_regex(&s, &tool));
            let other = ToolId::new("mcp:mail", format!("read_{}", "y".repeat(len)).as_str());
            assert_eq!(lookup(&s, &other), [1], "name of {} bytes", len + 5);
        }
    }

    #[test]
    fn glob_pieces_are_found_in_order() {
        let g = Glob::new("a*b*c");
        assert!(g.matches("abc") && g.matches("a-b-c") && g.matches("abbc"));
        assert!(!g.matches("acb") && !g.matches("ab") && !g.matches("bc"));
        assert!(!Glob::new("ab*ba").matches("aba"));
        assert!(Glob::new("ab*ba").matches("abba"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("**").matches("x"));
    }

    proptest! {
        #[test]
        fn the_index_binds_what_one_regex_per_selector_binds(
            selectors in prop::collection::vec(("[ab*\n]{0,4}", "[ab*]{0,3}"), 0..12),
            source in "[ab\n]{0,5}",
            name in "[ab\u{0}]{0,4}",
        ) {
            let selectors: Vec<ToolSelector> = selectors.iter().map(|(s, n)| sel(s, n)).collect();
            let tool = ToolId::new(source.as_str(), name.as_str());
            prop_assert_eq!(lookup(&selectors, &tool), by_regex(&selectors, &tool));
        }
    }
}
