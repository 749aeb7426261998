//! Validation of a node's configuration, and its stable hash.

use pgnm_protocol::node::{MAX_NAME_LEN, NodeSpec};
use sha2::{Digest, Sha256};

use super::chains::{ChainType, Chains};
use pgnm_rpc::secrets;

/// Looks up an environment variable.
pub type Lookup<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// Checks a node's type and configuration; returns the chain type. `at` is the
/// path of the configuration in the request (`config`, `set`, `nodes[3]`), so
/// that every message names its field.
pub fn validate<'c>(
    chains: &'c Chains,
    node_type: &str,
    spec: &NodeSpec,
    at: &str,
    env: Lookup<'_>,
) -> Result<&'c ChainType, String> {
    let chain = chains.get(node_type).ok_or_else(|| {
        format!("type: unknown chain type {node_type:?} (known: {})", chains.names().collect::<Vec<_>>().join(", "))
    })?;
    let field = |name: &str, why: String| format!("{at}.{name}: {why}");

    if spec.name.is_empty()
        || spec.name.len() > MAX_NAME_LEN
        || !spec.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(field("name", format!("use 1 to {MAX_NAME_LEN} of [A-Za-z0-9._-], got {:?}", spec.name)));
    }
    check_url(&spec.url).map_err(|why| field("url", why))?;
    check_references(&spec.url, env).map_err(|why| field("url", why))?;
    if let Some(auth) = &spec.auth {
        if auth.username.is_empty() {
            return Err(field("auth.username", "must not be empty".to_owned()));
        }
        check_references(&auth.username, env).map_err(|why| field("auth.username", why))?;
        check_references(&auth.password, env).map_err(|why| field("auth.password", why))?;
    }
    if spec.headers.len() > 32 {
        return Err(field("headers", "at most 32 headers".to_owned()));
    }
    for (name, value) in &spec.headers {
        let token =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        if !token {
            return Err(field("headers", format!("invalid header name {name:?}")));
        }
        if value.contains(['\r', '\n']) {
            return Err(field(&format!("headers.{name}"), "must not contain line breaks".to_owned()));
        }
        check_references(value, env).map_err(|why| field(&format!("headers.{name}"), why))?;
    }
    if spec.priority > 9 {
        return Err(field("priority", format!("must be between 0 and 9, got {}", spec.priority)));
    }
    if !(1..=10_000).contains(&spec.weight) {
        return Err(field("weight", format!("must be between 1 and 10000, got {}", spec.weight)));
    }
    if let Some(t) = spec.timeout_ms
        && !(100..=60_000).contains(&t)
    {
        return Err(field("timeoutMs", format!("must be between 100 and 60000, got {t}")));
    }
    if let Some(l) = spec.max_lag
        && l > 100_000
    {
        return Err(field("maxLag", format!("must be at most 100000, got {l}")));
    }
    if spec.labels.len() > 32 {
        return Err(field("labels", "at most 32 labels".to_owned()));
    }
    for (k, v) in &spec.labels {
        let valid =
            !k.is_empty() && k.len() <= 63 && k.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        if !valid {
            return Err(field("labels", format!("invalid label name {k:?} (1 to 63 of [A-Za-z0-9._/-])")));
        }
        if v.len() > 255 {
            return Err(field(&format!("labels.{k}"), "at most 255 bytes".to_owned()));
        }
    }
    Ok(chain)
}

fn check_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("malformed URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("unsupported scheme {:?} (use http or https)", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if url.fragment().is_some() {
        return Err("the URL must not have a #fragment".to_owned());
    }
    Ok(())
}

fn check_references(text: &str, env: Lookup<'_>) -> Result<(), String> {
    for name in secrets::references(text)? {
        if env(name).is_none() {
            return Err(format!("environment variable {name} is not set"));
        }
    }
    Ok(())
}

/// Returns the node's stable hash: from its type and its normalised endpoint
/// (scheme and host lowercased, default port and user info dropped, no trailing
/// slash), so the same node added twice is recognised whatever its credentials.
pub fn node_hash(node_type: &str, url: &str) -> String {
    let normalised = match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let mut s = u.to_string();
            while s.ends_with('/') {
                s.pop();
            }
            s
        }
        Err(_) => url.trim().to_owned(),
    };
    let digest = Sha256::digest(format!("{node_type}\n{normalised}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> NodeSpec {
        serde_json::from_value(serde_json::json!({"name": "n-1", "url": url})).unwrap()
    }

    #[test]
    fn hash_ignores_case_credentials_default_port_and_trailing_slash() {
        let a = node_hash("btc", "http://user:pw@Node.Example:80/");
        assert_eq!(a, node_hash("btc", "http://node.example"));
        assert_ne!(a, node_hash("ltc", "http://node.example"));
        assert_ne!(a, node_hash("btc", "http://node.example:8332"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn errors_name_the_field() {
        let chains = Chains::builtin();
        let env = |n: &str| (n == "SET").then(|| "v".to_owned());
        let check = |t: &str, s: &NodeSpec| validate(&chains, t, s, "config", &env).map(|_| ()).unwrap_err();
        assert!(check("nope", &spec("http://h")).starts_with("type: unknown chain type"));
        assert!(check("eth", &spec("not a url")).starts_with("config.url: malformed URL"));
        assert!(check("eth", &spec("ftp://h")).starts_with("config.url: unsupported scheme"));
        assert!(check("eth", &spec("http://h/${UNSET}")).contains("UNSET is not set"));
        let mut s = spec("http://h");
        s.weight = 0;
        assert!(check("eth", &s).starts_with("config.weight"));
        assert!(validate(&chains, "eth", &spec("http://u:${SET}@h"), "config", &env).is_ok());
    }
}
