//! What a non-2xx answer turns into: an error that says what the server said, short enough for a
//! log line.

use orgloop_plugin_sdk::{HttpResponse, PluginError};

/// How much of the response body an error message quotes.
const EXCERPT_BYTES: usize = 200;

/// `HTTP <status> from <url>: <first 200 bytes of the body>`.
pub fn status_error(url: &str, response: &HttpResponse) -> PluginError {
    PluginError::new(format!(
        "HTTP {} from {url}: {}",
        response.status,
        excerpt(&response.body)
    ))
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
    fn never_splits_a_character() {
        // 199 ASCII bytes, then a two-byte character straddling the limit.
        let body = format!("{}é and more", "a".repeat(199));
        assert_eq!(excerpt(body.as_bytes()), "a".repeat(199));
        assert_eq!(excerpt(&[0xff, b'o', b'k']), "\u{fffd}ok");
    }
}
