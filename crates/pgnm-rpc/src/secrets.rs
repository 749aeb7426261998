//! `${VAR}` references in node configuration, and the redaction of credentials
//! in everything a reply or a log line shows.

use pgnm_protocol::node::NodeSpec;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Returns the names referenced in `text` as `${NAME}` (NAME from
/// `[A-Za-z_][A-Za-z0-9_]*`), or why a reference is malformed.
pub fn references(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| "unterminated ${ reference".to_owned())?;
        let name = &after[..end];
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("invalid variable name {name:?} in ${{...}}"));
        }
        out.push(name);
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// Returns `text` with every reference replaced by its value from `lookup`, or
/// the name of the first variable that is not set.
pub fn resolve(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { return Err("unterminated ${ reference".to_owned()) };
        let name = &after[..end];
        out.push_str(&lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Returns whether `text` is exactly one `${VAR}` reference (which names a secret
/// without revealing it, so it may be shown).
pub fn is_single_reference(text: &str) -> bool {
    text.starts_with("${") && text.ends_with('}') && references(text).is_ok_and(|r| r.len() == 1)
}

fn mask(value: &str) -> String {
    if value.is_empty() || is_single_reference(value) { value.to_owned() } else { MASK.to_owned() }
}

fn sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["key", "token", "secret", "pass", "auth", "sig", "credential"].iter().any(|s| k.contains(s))
}

/// Returns whether a path segment looks like an API key (long, mixed letters and
/// digits), as providers put them in the path (`/v3/<key>`).
fn key_like(segment: &str) -> bool {
    segment.len() >= 16
        && segment.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && segment.chars().any(|c| c.is_ascii_digit())
        && segment.chars().any(|c| c.is_ascii_alphabetic())
}

/// Returns `url` with its credentials masked: the user info's password (or the
/// user name when it stands alone, as a token), key-like path segments, and the
/// values of query parameters named like keys, tokens or passwords. `${VAR}`
/// references stay visible. Works on the text as written, so it never fails.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let userinfo = match userinfo.split_once(':') {
                Some((user, pass)) => format!("{user}:{}", mask(pass)),
                None => mask(userinfo),
            };
            format!("{userinfo}@{host}")
        }
        None => authority.to_owned(),
    };
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (tail, None),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (before_fragment, None),
    };
    let path: Vec<String> = path
        .split('/')
        .map(|s| if key_like(s) && !is_single_reference(s) { MASK.to_owned() } else { s.to_owned() })
        .collect();
    let mut out = String::with_capacity(url.len());
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    out.push_str(&authority);
    out.push_str(&path.join("/"));
    if let Some(q) = query {
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) if sensitive_key(k) => format!("{k}={}", mask(v)),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Returns the configuration with every credential masked.
pub fn redact_spec(spec: &NodeSpec) -> NodeSpec {
    let mut out = spec.clone();
    out.url = redact_url(&spec.url);
    if let Some(auth) = &mut out.auth {
        auth.password = mask(&auth.password);
    }
    for value in out.headers.values_mut() {
        *value = mask(value);
    }
    out
}

/// A node's endpoint with every reference resolved: what a probe uses, and
/// nothing else ever sees.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL, credentials included.
    pub url: String,
    /// HTTP basic credentials.
    pub basic: Option<(String, String)>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &redact_url(&self.url)).finish_non_exhaustive()
    }
}

/// Resolves a node's configuration into the endpoint a probe calls, reading
/// the referenced variables through `lookup`; the error names the field.
pub fn resolve_endpoint(spec: &NodeSpec, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Endpoint, String> {
    let url = resolve(&spec.url, lookup).map_err(|e| format!("url: {e}"))?;
    let basic = match &spec.auth {
        Some(a) => Some((
            resolve(&a.username, lookup).map_err(|e| format!("auth.username: {e}"))?,
            resolve(&a.password, lookup).map_err(|e| format!("auth.password: {e}"))?,
        )),
        None => None,
    };
    let headers = spec
        .headers
        .iter()
        .map(|(k, v)| resolve(v, lookup).map(|v| (k.clone(), v)).map_err(|e| format!("headers.{k}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Endpoint { url, basic, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_and_resolved() {
        assert_eq!(references("http://u:${PASS}@h/${KEY}").unwrap(), ["PASS", "KEY"]);
        assert!(references("${OPEN").is_err());
        assert!(references("${1X}").is_err());
        let lookup = |n: &str| (n == "PASS").then(|| "s3cret".to_owned());
        assert_eq!(resolve("a:${PASS}@b", &lookup).unwrap(), "a:s3cret@b");
        assert_eq!(resolve("${NOPE}", &lookup).unwrap_err(), "environment variable NOPE is not set");
    }

    #[test]
    fn endpoints_resolve_secrets_and_never_print_them() {
        let spec: NodeSpec = serde_json::from_value(serde_json::json!({
            "name": "n", "url": "https://rpc.example/v3/${KEY}",
            "auth": {"username": "u", "password": "${PASS}"}, "headers": {"x-api-key": "${KEY}"}
        }))
        .unwrap();
        let lookup = |n: &str| match n {
            "KEY" => Some("k3y0123456789abcdef".to_owned()),
            "PASS" => Some("pa55".to_owned()),
            _ => None,
        };
        let e = resolve_endpoint(&spec, &lookup).unwrap();
        assert_eq!(e.url, "https://rpc.example/v3/k3y0123456789abcdef");
        assert_eq!(e.basic, Some(("u".to_owned(), "pa55".to_owned())));
        assert_eq!(e.headers, [("x-api-key".to_owned(), "k3y0123456789abcdef".to_owned())]);
        let shown = format!("{e:?}");
        assert!(!shown.contains("k3y0") && !shown.contains("pa55"), "{shown}");
        assert_eq!(resolve_endpoint(&spec, &|_| None).unwrap_err(), "url: environment variable KEY is not set");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("http://user:hunter2@10.0.0.1:8332/"), "http://user:***@10.0.0.1:8332/");
        assert_eq!(redact_url("http://user:${BTC_PASS}@h:8332"), "http://user:${BTC_PASS}@h:8332");
        assert_eq!(redact_url("https://tok3nAbcdefghijklmn@h/"), "https://***@h/");
        assert_eq!(
            redact_url("https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161"),
            "https://mainnet.infura.io/v3/***"
        );
        assert_eq!(
            redact_url("https://rpc.example/x?apikey=abc123&chain=1&token=${T}"),
            "https://rpc.example/x?apikey=***&chain=1&token=${T}"
        );
        assert_eq!(redact_url("http://node-1.internal:8545"), "http://node-1.internal:8545");
    }
}
