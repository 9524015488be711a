//! Request headers built from several layers (defaults, actor config, auth, route config), where a
//! later layer replaces a header of the same name, compared case-insensitively as HTTP does.

/// An ordered header list with replace-by-name.
#[derive(Debug, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// Sets `name` to `value`, replacing any header of that name.
    pub fn set(&mut self, name: &str, value: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.0.push((name.to_owned(), value.to_owned()));
    }

    /// Sets every pair of `pairs`.
    pub fn extend<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a String, &'a String)>) {
        for (name, value) in pairs {
            self.set(name, value);
        }
    }

    /// The pairs, for `HttpRequest::headers`.
    pub fn into_vec(self) -> Vec<(String, String)> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_replace_earlier_ones_by_name() {
        let mut h = Headers::default();
        h.set("content-type", "application/json");
        h.set("X-A", "1");
        h.set("Content-Type", "text/plain");
        h.set("x-a", "2");
        assert_eq!(
            h.into_vec(),
            vec![
                ("Content-Type".to_owned(), "text/plain".to_owned()),
                ("x-a".to_owned(), "2".to_owned())
            ]
        );
    }
}
