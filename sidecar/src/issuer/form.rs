//! `application/x-www-form-urlencoded` request bodies, read the way RFC 6749
//! §3.1 asks: empty values count as absent, repeated parameters are an error
//! (except those allowed to repeat), unknown parameters are ignored.

use std::borrow::Cow;

use crate::oauth_error::OAuthError;

/// Parsed form parameters.
#[derive(Debug, Default)]
pub struct Form<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Form<'a> {
    /// Parses a body. `repeatable` names parameters that may appear more than
    /// once, such as `resource` (RFC 8707 §2).
    pub fn parse(body: &'a [u8], repeatable: &[&str]) -> Result<Self, OAuthError> {
        let mut pairs: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(8);
        for (name, value) in form_urlencoded::parse(body) {
            if value.is_empty() {
                continue;
            }
            if !repeatable.contains(&&*name) && pairs.iter().any(|(n, _)| *n == name) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {name} is repeated; send it once (RFC 6749 §3.1)"
                )));
            }
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    /// The single value of `name`, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| &**v)
    }

    /// Every value of a repeatable parameter.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.pairs.iter().filter(move |(n, _)| n == name).map(|(_, v)| &**v)
    }

    pub fn require(&self, name: &'static str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("missing required parameter {name}")))
    }
}

/// Checks the request's media type before its body is read.
pub fn check_content_type(value: Option<&http::HeaderValue>) -> Result<(), OAuthError> {
    let essence = value.and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).map(str::trim);
    match essence {
        Some(t) if t.eq_ignore_ascii_case("application/x-www-form-urlencoded") => Ok(()),
        _ => Err(OAuthError::invalid_request("send parameters as an application/x-www-form-urlencoded body")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_are_absent_and_unknown_parameters_kept_aside() {
        let f = Form::parse(b"grant_type=client_credentials&scope=&x=1", &[]).unwrap();
        assert_eq!(f.get("grant_type"), Some("client_credentials"));
        assert_eq!(f.get("scope"), None);
        assert_eq!(f.get("x"), Some("1"));
    }

    #[test]
    fn repeated_parameters_are_rejected_unless_repeatable() {
        let err = Form::parse(b"scope=a&scope=b", &[]).unwrap_err();
        assert_eq!(err.code, "invalid_request");
        assert!(err.description.contains("scope"));
        let f = Form::parse(b"resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb", &["resource"]).unwrap();
        assert_eq!(f.all("resource").collect::<Vec<_>>(), ["https://a", "https://b"]);
    }

    #[test]
    fn percent_and_plus_decoding() {
        let f = Form::parse(b"scope=read+write%3Aall", &[]).unwrap();
        assert_eq!(f.get("scope"), Some("read write:all"));
    }

    #[test]
    fn content_type_must_be_a_form() {
        let ok = http::HeaderValue::from_static("application/x-www-form-urlencoded; charset=UTF-8");
        assert!(check_content_type(Some(&ok)).is_ok());
        let json = http::HeaderValue::from_static("application/json");
        assert!(check_content_type(Some(&json)).is_err());
        assert!(check_content_type(None).is_err());
    }
}
