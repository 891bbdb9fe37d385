//! `${NAME}` and `${NAME:-default}` references to environment variables in
//! config values, so secrets and per-machine values stay out of the files.

use std::borrow::Cow;

/// Why a value could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error(
        "environment variable `{0}` is not set and has no default: set it, or write `${{{0}:-default}}`"
    )]
    Unset(String),
    #[error("unclosed `${{` in `{0}`: write `${{NAME}}` or `${{NAME:-default}}`")]
    Unclosed(String),
}

/// Expands every `${NAME}` / `${NAME:-default}` in `input` using `lookup`.
/// `$$` stands for a literal `$`.
pub fn expand_with(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Cow<'_, str>, TemplateError> {
    if !input.contains('$') {
        return Ok(Cow::Borrowed(input));
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(input.to_string()))?;
            let reference = &body[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            match lookup(name).filter(|v| !v.is_empty()) {
                Some(value) => out.push_str(&value),
                None => match default {
                    Some(default) => out.push_str(default),
                    None => return Err(TemplateError::Unset(name.to_string())),
                },
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// Expands references from the process environment.
pub fn expand(input: &str) -> Result<Cow<'_, str>, TemplateError> {
    expand_with(input, |name| std::env::var(name).ok())
}

/// A string config value with its environment references already expanded.
/// Expanding while deserialising lets TOML errors point at the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand(&raw)
            .map(|v| Text(v.into_owned()))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("crm.local".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_and_default() {
        assert_eq!(
            expand_with("http://${HOST}:80", env).unwrap(),
            "http://crm.local:80"
        );
        assert_eq!(expand_with("${MISSING:-x}", env).unwrap(), "x");
        assert_eq!(expand_with("${EMPTY:-fallback}", env).unwrap(), "fallback");
        assert_eq!(
            expand_with("cost $$5 and $x", env).unwrap(),
            "cost $5 and $x"
        );
        assert_eq!(
            expand_with("${MISSING}", env).unwrap_err(),
            TemplateError::Unset("MISSING".into())
        );
        assert!(matches!(
            expand_with("${HOST", env).unwrap_err(),
            TemplateError::Unclosed(_)
        ));
    }
}
