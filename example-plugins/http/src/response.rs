//! What a non-2xx answer turns into: an error that says what the server said, short enough for a
//! log line.

use std::time::Duration;

use orgloop_plugin_sdk::{HttpResponse, PluginError};

/// How much of the response body an error message quotes.
const EXCERPT_BYTES: usize = 200;

/// `HTTP <status> from <url>: <first 200 bytes of the body>`. A client error other than 408
/// (timeout) and 429 (too many requests) is permanent: sending the same request again cannot
/// succeed. A `Retry-After` in seconds is passed on as the least wait before the next attempt.
pub fn status_error(url: &str, response: &HttpResponse) -> PluginError {
    let error = PluginError::new(format!(
        "HTTP {} from {url}: {}",
        response.status,
        excerpt(&response.body)
    ));
    let error = match response.status {
        400..=499 if !matches!(response.status, 408 | 429) => error.permanent(),
        _ => error,
    };
    match retry_after(response) {
        Some(after) => error.with_retry_after(after),
        None => error,
    }
}

/// The `Retry-After` header in its delay-seconds form (the HTTP-date form is ignored).
fn retry_after(response: &HttpResponse) -> Option<Duration> {
    response
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, value)| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// At most the first [`EXCERPT_BYTES`] bytes as text, without cutting a character in half.
fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(EXCERPT_BYTES)];
    let text = match std::str::from_utf8(cut) {
        Ok(text) => return text.to_owned(),
        // Only the last character is incomplete: drop it.
        Err(e) if e.error_len().is_none() => &cut[..e.valid_up_to()],
        Err(_) => cut,
    };
    String::from_utf8_lossy(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &[u8]) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![],
            body: body.to_vec(),
        }
    }

    #[test]
    fn quotes_the_start_of_the_body() {
        let e = status_error("http://h/x", &response(503, b"try later"));
        assert_eq!(e.message(), "HTTP 503 from http://h/x: try later");
        let long = "x".repeat(500);
        let e = status_error("http://h/x", &response(500, long.as_bytes()));
        assert_eq!(
            e.message(),
            format!("HTTP 500 from http://h/x: {}", "x".repeat(200))
        );
    }

    #[test]
    fn client_errors_are_permanent_except_timeouts_and_throttling() {
        for (status, permanent) in [
            (400, true),
            (404, true),
            (408, false),
            (429, false),
            (500, false),
            (503, false),
        ] {
            let e = status_error("http://h/x", &response(status, b""));
            assert_eq!(e.is_permanent(), permanent, "HTTP {status}");
        }
    }

    #[test]
    fn retry_after_seconds_are_passed_on() {
        let mut r = response(429, b"");
        r.headers.push(("Retry-After".into(), " 7 ".into()));
        assert_eq!(
            status_error("u", &r).retry_after(),
            Some(Duration::from_secs(7))
        );
        r.headers[0].1 = "Wed, 21 Oct 2026 07:28:00 GMT".into();
        assert_eq!(status_error("u", &r).retry_after(), None);
    }

    #[test]
    fn never_splits_a_character() {
        // 199 ASCII bytes, then a two-byte character straddling the limit.
        let body = format!("{}é and more", "a".repeat(199));
        assert_eq!(excerpt(body.as_bytes()), "a".repeat(199));
        assert_eq!(excerpt(&[0xff, b'o', b'k']), "\u{fffd}ok");
    }
}
