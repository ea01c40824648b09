//! References to bundles: `name:tag`, `name` (= `name:latest`), `name@sha256:<hex>`,
//! `sha256:<hex>` or an unambiguous digest prefix.

use crate::digest::Digest;
use crate::error::{Error, Result};

/// A parsed reference, before it is resolved against an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(TagName),
    /// `name@sha256:<hex>`: the name is informational.
    Digest(Digest),
    /// A prefix of a manifest digest's hex (with or without `sha256:`).
    Prefix(String),
}

/// `name:tag`, validated like OCI repository names and tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagName {
    pub name: String,
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
        let name_ok = !name.is_empty()
            && name.len() <= 255
            && name.split('/').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                    })
            });
        if !name_ok {
            return Err(invalid(
                s,
                "a name is lowercase letters, digits, '.', '_', '-' and '/' separators",
            ));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
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

impl Reference {
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
        let looks_hex = s.len() >= 6
            && s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if looks_hex && !s.contains(':') {
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
    fn rejects_bad_names() {
        for bad in [
            "",
            "UPPER:v1",
            "a:",
            "a:b c",
            "a//b:v",
            "sha256:xy",
            "x@sha256:12",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
