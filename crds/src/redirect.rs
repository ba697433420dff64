//! Redirect URI rules of RFC 9700 §2.1 and RFC 8252 §7, shared by the CRD
//! schema (as CEL), the operator and the issuer.

use url::{Host, Url};

pub const FRAGMENT: &str = "redirect URIs must not contain a fragment (RFC 6749 §3.1.2); remove the '#' part";
pub const WILDCARD: &str =
    "redirect URIs are matched exactly (RFC 9700 §2.1); wildcards are not allowed, list every URI";
pub const SCHEME: &str = "a redirect URI must be https, http on a loopback host (localhost, 127.0.0.1, [::1]), \
     or a private-use scheme in reverse-domain form such as com.example.app:/callback (RFC 8252 §7.1)";
pub const USERINFO: &str = "redirect URIs must not contain user information ('user@host')";

/// Hosts for which plain http is allowed: the browser never leaves the device.
pub fn is_loopback_host(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Checks one registered redirect URI; the error is a message for the user.
pub fn check(uri: &str) -> Result<(), &'static str> {
    if uri.contains('#') {
        return Err(FRAGMENT);
    }
    if uri.contains('*') {
        return Err(WILDCARD);
    }
    let url = Url::parse(uri).map_err(|_| SCHEME)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(USERINFO);
    }
    let scheme_ok = match url.scheme() {
        "https" => url.host().is_some(),
        "http" => url.host().is_some_and(|h| is_loopback_host(&h)),
        private => private.contains('.') && uri.starts_with(private),
    };
    // A scheme written in upper case parses fine but would never match exactly.
    if !scheme_ok || !uri.starts_with(url.scheme()) {
        return Err(SCHEME);
    }
    Ok(())
}

/// Whether a redirect URI presented at the authorization endpoint matches a
/// registered one: character for character, except that the port of a
/// loopback host may differ (RFC 8252 §7.3, RFC 9700 §2.1).
pub fn matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let (Ok(r), Ok(p)) = (Url::parse(registered), Url::parse(presented)) else {
        return false;
    };
    r.scheme() == "http"
        && r.host().is_some_and(|h| is_loopback_host(&h))
        && without_port(registered, &r) == without_port(presented, &p)
}

/// The URI text with its port removed, so the rest is compared as written.
fn without_port(text: &str, url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let start = text.find("://")? + 3;
    text[start..]
        .starts_with(&authority)
        .then(|| format!("{}{host}{}", &text[..start], &text[start + authority.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_is_exact_but_for_the_loopback_port() {
        let reg = "https://app.example.com/cb";
        assert!(matches(reg, reg));
        for near_miss in [
            "https://app.example.com/cb/",
            "https://APP.example.com/cb",
            "https://app.example.com/CB",
            "https://app.example.com/cb/extra",
            "https://app.example.com/cb?x=1",
            "https://user@app.example.com/cb",
            "https://app.example.com:8443/cb",
            "https://app.example.com.evil.com/cb",
            "http://app.example.com/cb",
        ] {
            assert!(!matches(reg, near_miss), "{near_miss}");
        }
        assert!(matches("http://127.0.0.1/cb", "http://127.0.0.1:51004/cb"));
        assert!(matches("http://127.0.0.1:8000/cb", "http://127.0.0.1:9000/cb"));
        assert!(matches("http://[::1]/cb", "http://[::1]:4000/cb"));
        assert!(!matches("http://127.0.0.1/cb", "http://127.0.0.1:51004/cb2"));
        assert!(!matches("http://127.0.0.1/cb", "http://127.0.0.2:51004/cb"));
        assert!(!matches("http://127.0.0.1/cb", "http://user@127.0.0.1:5/cb"));
        assert!(matches("http://localhost/cb", "http://localhost:5000/cb"));
        assert!(!matches("http://localhost/cb", "http://127.0.0.1:5000/cb"), "the host itself must match");
    }

    #[test]
    fn accepts_what_rfc_9700_allows() {
        for uri in [
            "https://app.example.com/callback",
            "https://app.example.com:8443/cb?tenant=a",
            "http://localhost/callback",
            "http://127.0.0.1:51004/cb",
            "http://[::1]/cb",
            "com.example.app:/oauth2redirect",
        ] {
            assert_eq!(check(uri), Ok(()), "{uri}");
        }
    }

    #[test]
    fn rejects_what_rfc_9700_forbids() {
        for (uri, why) in [
            ("https://app.example.com/cb#frag", FRAGMENT),
            ("https://*.example.com/cb", WILDCARD),
            ("https://app.example.com/*", WILDCARD),
            ("http://app.example.com/cb", SCHEME),
            ("http://10.0.0.1/cb", SCHEME),
            ("HTTPS://app.example.com/cb", SCHEME),
            ("javascript:alert(1)", SCHEME),
            ("myapp:/cb", SCHEME),
            ("/relative/cb", SCHEME),
            ("https://user@app.example.com/cb", USERINFO),
            ("https://user:pw@app.example.com/cb", USERINFO),
        ] {
            assert_eq!(check(uri), Err(why), "{uri}");
        }
    }
}
