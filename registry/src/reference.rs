//! References to bundles: `name:tag`, `name` (= `name:latest`), `name@sha256:<hex>`,
//! `sha256:<hex>` or an unambiguous digest prefix.

use crate::digest::Digest;
use crate::error::{Error, Result};

/// A parsed reference, before it is resolved against an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `name:tag`.
    Tag(TagName),
    /// `name@sha256:<hex>`: the name is informational.
    Digest(Digest),
    /// A prefix of a manifest digest's hex (with or without `sha256:`).
    Prefix(String),
}

/// `name:tag`, validated like OCI repository names and tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagName {
    /// The repository name (OCI grammar).
    pub name: String,
    /// The tag.
    pub tag: String,
}

impl std::fmt::Display for TagName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

fn invalid(reference: &str, reason: &str) -> Error {
    Error::InvalidReference {
        reference: reference.into(),
        reason: reason.into(),
    }
}

impl TagName {
    /// Parses `name[:tag]` (tag defaults to `latest`).
    pub fn parse(s: &str) -> Result<Self> {
        let (name, tag) = match s.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (s, "latest"),
        };
        if !valid_name(name) {
            return Err(invalid(
                s,
                "a name is lowercase letters and digits, joined by '.', '_', '__' or '-' and \
                 separated by '/' (the OCI distribution grammar)",
            ));
        }
        if name == "sha256" || (!s.contains(':') && Reference::looks_like_digest(name)) {
            return Err(invalid(
                s,
                "it would be read as a digest prefix; give a tag (NAME:TAG) or another name",
            ));
        }
        let tag_ok = valid_tag(tag);
        if !tag_ok {
            return Err(invalid(
                s,
                "a tag is letters, digits, '.', '_' and '-' (at most 128)",
            ));
        }
        Ok(Self {
            name: name.into(),
            tag: tag.into(),
        })
    }
}

/// A repository name in the OCI distribution grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255.
pub fn valid_name(name: &str) -> bool {
    fn component(c: &str) -> bool {
        let b = c.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // A separator run: '.', '_', '__' or one or more '-'.
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
            if !ok {
                return false;
            }
        }
        true
    }
    !name.is_empty() && name.len() <= 255 && name.split('/').all(component)
}

/// A tag in the OCI grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Reference {
    /// True for what [`Reference::parse`] reads as a digest prefix when no tag follows.
    fn looks_like_digest(s: &str) -> bool {
        s == "sha256"
            || (s.len() >= 6
                && s.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
    }

    /// Parses any form of reference.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some((name, digest)) = s.split_once('@') {
            TagName::parse(name)?;
            return Ok(Self::Digest(digest.parse()?));
        }
        if let Some(hex) = s.strip_prefix("sha256:") {
            if hex.len() == 64 {
                return Ok(Self::Digest(s.parse()?));
            }
            if hex.len() >= 4
                && hex
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                return Ok(Self::Prefix(hex.into()));
            }
            return Err(invalid(
                s,
                "a digest prefix needs at least 4 lowercase hex digits",
            ));
        }
        if s != "sha256" && Self::looks_like_digest(s) {
            return Ok(Self::Prefix(s.into()));
        }
        Ok(Self::Tag(TagName::parse(s)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Reference::parse("pascal/vmt:v1").unwrap(),
            Reference::Tag(TagName {
                name: "pascal/vmt".into(),
                tag: "v1".into()
            })
        );
        assert_eq!(
            Reference::parse("vmt").unwrap(),
            Reference::Tag(TagName {
                name: "vmt".into(),
                tag: "latest".into()
            })
        );
        let d = Digest::of(b"x");
        assert_eq!(
            Reference::parse(&format!("vmt@{d}")).unwrap(),
            Reference::Digest(d)
        );
        assert_eq!(
            Reference::parse(&d.to_string()).unwrap(),
            Reference::Digest(d)
        );
        assert_eq!(
            Reference::parse("sha256:abcd").unwrap(),
            Reference::Prefix("abcd".into())
        );
        assert_eq!(
            Reference::parse("abcdef12").unwrap(),
            Reference::Prefix("abcdef12".into())
        );
    }

    #[test]
    fn oci_grammar() {
        for good in ["a", "a.b", "a_b", "a__b", "a---b", "team/a-b.c", "0x"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["a..b", "a-", "a._b", "a___b", "A", "a//b", "/a", "a/"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_tag_that_reads_as_a_digest_is_refused() {
        for bad in ["abcdef", "0123456789", "sha256", "sha256:abcd"] {
            let e = TagName::parse(bad).unwrap_err().to_string();
            assert!(e.contains("digest"), "{bad}: {e}");
        }
        // With an explicit tag there is no ambiguity.
        assert!(TagName::parse("abcdef:v1").is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "UPPER:v1",
            "a:",
            "a:b c",
            "a//b:v",
            "sha256:xy",
            "x@sha256:12",
            "a..b:v1",
            "a-:v1",
            "-a:v1",
            "a___b:v1",
            "a/.b:v1",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
