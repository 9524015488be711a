//! URL checks and query building. The daemon's HTTP client speaks plain `http://` (see
//! `HttpRequest::url` in the SDK), so a wrong scheme is refused when the config is read instead of
//! failing on the first delivery.

/// Checks that `url` is an absolute `http://` URL with a host. `key` names the config key.
pub fn check(key: &str, url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.starts_with("https://") {
            format!("{key}: {url:?}: https is not supported by the daemon's HTTP client; use an http:// URL (e.g. a local TLS-terminating proxy)")
        } else {
            format!("{key}: {url:?} is not an absolute http:// URL")
        }
    })?;
    if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
        return Err(format!("{key}: {url:?} has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{key}: {url:?} contains whitespace"));
    }
    Ok(())
}

/// Appends `name=value` to the query of `url`, percent-encoding `value`, before any `#fragment`.
pub fn with_query(url: &str, name: &str, value: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let separator = match base.find('?') {
        None => "?",
        Some(_) if base.ends_with(['?', '&']) => "",
        Some(_) => "&",
    };
    let mut out = format!("{base}{separator}{name}={}", percent_encode(value));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Encodes everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_urls() {
        for ok in [
            "http://127.0.0.1:9000/hook",
            "http://example.com",
            "http://h/p?x=1",
        ] {
            assert_eq!(check("url", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_other_urls_with_reasons() {
        assert!(check("url", "https://example.com")
            .unwrap_err()
            .contains("https is not supported"));
        assert!(check("url", "ftp://x")
            .unwrap_err()
            .contains("not an absolute http:// URL"));
        assert!(check("url", "/hook")
            .unwrap_err()
            .contains("not an absolute http:// URL"));
        assert!(check("url", "")
            .unwrap_err()
            .contains("not an absolute http:// URL"));
        assert!(check("url", "http://").unwrap_err().contains("has no host"));
        assert!(check("url", "http:///x")
            .unwrap_err()
            .contains("has no host"));
        assert!(check("url", "http://a b")
            .unwrap_err()
            .contains("whitespace"));
        assert!(check("route config url", "x")
            .unwrap_err()
            .starts_with("route config url: "));
    }

    #[test]
    fn appends_query_parameters() {
        assert_eq!(with_query("http://h/e", "since", "7"), "http://h/e?since=7");
        assert_eq!(
            with_query("http://h/e?a=1", "since", "7"),
            "http://h/e?a=1&since=7"
        );
        assert_eq!(
            with_query("http://h/e?", "since", "7"),
            "http://h/e?since=7"
        );
        assert_eq!(
            with_query("http://h/e?a=1&", "since", "7"),
            "http://h/e?a=1&since=7"
        );
        assert_eq!(
            with_query("http://h/e#top", "since", "7"),
            "http://h/e?since=7#top"
        );
        assert_eq!(
            with_query("http://h/e", "since", "2026-01-01T00:00:00.000Z"),
            "http://h/e?since=2026-01-01T00%3A00%3A00.000Z"
        );
    }

    #[test]
    fn percent_encodes_everything_but_unreserved() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            percent_encode("a b&c=d/e?f#g+h%"),
            "a%20b%26c%3Dd%2Fe%3Ff%23g%2Bh%25"
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
